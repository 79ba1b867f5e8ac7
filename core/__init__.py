"""The sans-IO SIP core and Kamailio's process model that the strategies plug into."""

from core import compiled

compiled.install()  # before any compiled module can be imported: them or their sources
