"""Built-in presets (YAML files beside this module): smoke, default, paper."""
