#!/bin/sh
# Provisions a netsy node on a VM managed by Nstance (run by the userdata in
# netsy.jsonc with NETSY_RELEASE set): installs the binary and the systemd
# unit, and starts netsy once Nstance has delivered the node's certificates
# and settings to /opt/nstance-agent/recv.
set -eu

: "${NETSY_RELEASE:?NETSY_RELEASE must point at the netsy binary to install}"

# The service user; it reads the delivered files through the agent's group.
getent group netsy >/dev/null || groupadd --system netsy
getent passwd netsy >/dev/null || useradd --system --gid netsy --home-dir /var/lib/netsy --shell /usr/sbin/nologin netsy
if getent group nstance-agent >/dev/null; then usermod -aG nstance-agent netsy; fi

curl -fsSL "$NETSY_RELEASE" -o /usr/local/bin/netsy.new
chmod 0755 /usr/local/bin/netsy.new
mv /usr/local/bin/netsy.new /usr/local/bin/netsy

# The unit from deploy/netsy.service, pointed at the files Nstance delivers.
mkdir -p /etc/systemd/system/netsy.service.d
cat > /etc/systemd/system/netsy.service <<'UNIT'
[Unit]
Description=netsy, an etcd-compatible key-value store on object storage
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User=netsy
Group=netsy
EnvironmentFile=/opt/nstance-agent/recv/netsy.env
ExecStart=/usr/local/bin/netsy --config /opt/nstance-agent/recv/netsy.json
Restart=always
RestartSec=5s
TimeoutStopSec=45s
LimitNOFILE=1048576
StateDirectory=netsy
StateDirectoryMode=0750
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=/var/lib/netsy
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
CapabilityBoundingSet=

[Install]
WantedBy=multi-user.target
UNIT

# Start netsy when the delivered files arrive, and restart it when Nstance
# delivers new ones (certificate renewal): Nstance touches write-files.last
# after every successful delivery.
cat > /etc/systemd/system/netsy-files.path <<'PATHUNIT'
[Unit]
Description=Start or restart netsy when Nstance delivers its files

[Path]
PathChanged=/opt/nstance-agent/recv/write-files.last
Unit=netsy-files.service

[Install]
WantedBy=multi-user.target
PATHUNIT
cat > /etc/systemd/system/netsy-files.service <<'RESTART'
[Unit]
Description=Restart netsy with newly delivered files

[Service]
Type=oneshot
ExecStart=/bin/systemctl try-restart --no-block netsy.service
ExecStart=/bin/systemctl start --no-block netsy.service
RESTART

systemctl daemon-reload
systemctl enable --now netsy-files.path
systemctl enable netsy.service
if [ -f /opt/nstance-agent/recv/netsy.env ]; then systemctl start --no-block netsy.service; fi
