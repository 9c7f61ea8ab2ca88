"""ControlNets and T2I-Adapters: file layouts (`layout`), loading into diffusers classes (`load`), the CONTROL_NET
value and the residuals it adds inside the UNet (`control`), and the nodes (`nodes`)."""
