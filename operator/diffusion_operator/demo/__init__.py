"""`diffusion-operator dev demo`: two canary rollouts played on the local cluster while load flows."""
