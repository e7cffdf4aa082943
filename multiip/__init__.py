"""multiip: many source IPv4 addresses on one Linux host (netns + veth + bridge + DHCP)."""

__version__ = "0.1.0"
