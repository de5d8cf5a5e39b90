"""The Pi0.5 runtime: configs, strict checkpoint loading, the fp32 reference, the Plan A engine and the Policy API."""
