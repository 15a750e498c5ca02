"""diffusion-operator: serve diffusion models on Kubernetes.

Reconciles ``DiffusionModel`` and ``InferencePool`` (API group ``diffusion.serving.dev``)
into GPU workloads and drives SLO burn-rate canaries between model revisions.

This package must never import torch or diffusers: the sampler that needs them is its own
package (``diffusion_sampler`` under ``inference_image/``).
"""

__version__ = "0.1.0"

API_GROUP = "diffusion.serving.dev"
API_VERSION = "v1alpha1"
