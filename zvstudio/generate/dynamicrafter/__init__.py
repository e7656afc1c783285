"""DynamiCrafter: a still image animated by its own video diffusion model (METHOD 3).

Not in diffusers, so the model is ours, written from the paper and the released checkpoint
layout (Doubiiu/DynamiCrafter): a 3D UNet whose 8 input channels are the noisy video latent and
the image latent (`unet3d`), the image's CLIP ViT-H/14 tokens turned into per-frame context
tokens by a query transformer (`resampler`), the presets with the released numbers (`config`),
the v-prediction / zero-terminal-SNR schedule (`schedule`), and loading the released
checkpoints onto these modules, diffusers' VAE and transformers' CLIP towers (`checkpoint`).
Sampling as the released scripts run it (`sampler`, with OpenCLIP's `tokenizer` and the image
`preprocess`ing), and the job that loads a checkpoint and writes the clip (`job`).
"""
