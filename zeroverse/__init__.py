"""zeroverse: procedural Zeroverse shapes -> Blender render farm -> Parquet shards -> GS-LRM / G3R.

`import zeroverse` stays light on purpose: it never imports bpy, ray or torch. Each stage imports
the heavy package it needs (blender_scripts/ bpy, pipelines/ ray, zeroverse.data and
zeroverse.lrm torch), so that the pure modules (recipes, cameras, textures) also run inside any
Blender Python that has only numpy.
"""

__version__ = "0.1.0"
