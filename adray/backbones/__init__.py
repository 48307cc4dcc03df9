"""Frozen feature extractors: timm CNN/ViT features, open_clip, Point-MAE; weights resolved in weights.py."""
