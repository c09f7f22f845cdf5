"""Dataset producers used by scripts/build_pairs.py: laion_sg (candidates from LAION-SG annotations),
pickapic (Pick-a-Pic v2 import), shapes (the synthetic world). Modules land with the build_pairs issue."""
