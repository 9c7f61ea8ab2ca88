"""ComfyUI-compatible sampling: sigma tables and schedules, initial noise, CFG over CONDITIONING
lists, the KSampler pipeline (`pipeline.ksample`) and k-diffusion style sampler functions
(`ode.ODE_SAMPLERS`, `stochastic.STOCHASTIC_SAMPLERS`, looked up by name in `names`)."""
