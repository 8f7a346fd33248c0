"""Files: DNNBrain stimulus tables (``.stim.csv``), image files (EXIF orientation, a pixel
limit) and saliency maps (.npy, .png, .nii.gz).

Every map writer is atomic (temporary file in the same folder, then :func:`os.replace`).
"""
from .images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, image_size, pixel_limit, read_image
from .maps import (MAP_SUFFIXES, atomic_path, atomic_write, load_map, load_nifti, save_map,
                   save_nifti, save_npy, save_png)
from .stim import IMAGE_EXTENSIONS, STIM_TYPES, Stimulus, demo_stimulus_file

__all__ = ["Stimulus", "demo_stimulus_file", "STIM_TYPES", "IMAGE_EXTENSIONS",
           "atomic_path", "atomic_write", "save_npy", "save_png", "save_nifti",
           "load_nifti", "load_map", "save_map", "MAP_SUFFIXES", "read_image", "image_size",
           "pixel_limit", "DEFAULT_MAX_PIXELS", "MAX_PIXELS_ENV"]
