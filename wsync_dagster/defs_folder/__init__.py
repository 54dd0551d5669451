"""The dg defs folder: one folder per component, each with its defs.yaml (`[tool.dg.project] defs_module`)."""
