"""The systemd unit and its /etc/default file (`scx-gpu install-service`)."""
