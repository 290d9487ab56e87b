"""pdsn_jax: occlusion-robust face recognition with Pairwise Differential Siamese Networks."""

__version__ = "0.1.0"
