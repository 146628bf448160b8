"""The storage floor: roots, shards and manifests on local disks or object stores (pyarrow).

Shard schemas, atomic puts, the manifest and its records, and the readers that turn stored rows
back into scene objects (a shape row into a mesh). Imports zeroverse.scene, never a stage above.
"""
