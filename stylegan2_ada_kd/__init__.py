"""Data-limited GAN methods on top of StyleGAN2-ADA, each a loss plugin.

KD-DLGAN (CLIP teacher, AGKD, CGKD), DiffAugment, APA, LeCam and InsGen live here.
`training/` and `metrics/` never import this package by name; they reach it through
`class_name` strings in the kwargs tree (see DESIGN.md).
"""
