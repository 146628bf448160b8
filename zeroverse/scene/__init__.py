"""The pure floor: what a shape and its views are, in numpy and the standard library only.

Recipes, primitives, cameras, render settings, image codecs, textures (a package), real-object
meshes, and the one local atomic file write (files.py).
Blender's own Python (bpy + numpy, no pyarrow, no torch) imports these modules inside the
render workers, so nothing here may import pyarrow, ray, torch or anything above this floor.
"""
