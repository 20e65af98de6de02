"""What every layer shares, importing nothing of editsweep: registries, params, metric info, Hub switches.

The flow spec -> plan -> workers -> store -> report imports downward: `bench` and `reports` import
`methods`, `datasets` and `core`; `methods` imports `diffusion`, `datasets` and `core`; `diffusion`
imports `datasets` and `core`; `core` imports nothing of editsweep.
"""
