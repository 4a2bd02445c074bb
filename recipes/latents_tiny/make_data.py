"""Write the tiny latent + text-embedding data set of recipes/flux_tiny and recipes/sd3_tiny.

64 samples of 16x8x8 latents (FLUX and SD3 latents have 16 channels), 4-token prompts of
width 32 and pooled embeddings of width 32, from 4 synthetic "prompts", in 2 shards:

    PYTHONPATH=. python recipes/latents_tiny/make_data.py recipes/latents_tiny
"""

import sys

from flowpost.data.latents import toy_latents, write_latent_shards

out = sys.argv[1] if len(sys.argv) > 1 else "recipes/latents_tiny"
latents, prompt, pooled = toy_latents(64, channels=16, size=8, text_len=4, text_dim=32)
print(write_latent_shards(out, latents, prompt, pooled, shard_size=32), "shards written to", out)
