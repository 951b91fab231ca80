"""_hotplug."""
