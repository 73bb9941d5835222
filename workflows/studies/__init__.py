"""Study presets (``s4seg study --preset NAME``): YAML files of config, methods, labels, seeds."""
