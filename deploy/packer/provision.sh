#!/bin/bash
# Provisions the INCL GPU AMI (run as root by Packer, deploy/packer/gpu-ami.pkr.hcl). On the Deep Learning Base
# AMI the driver, Docker and the container toolkit are already there and only checked; on a plain Ubuntu base
# they are installed.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

cloud-init status --wait || true  # the base image's own first-boot work must finish before apt
apt-get update -q

# NVIDIA driver.
if ! command -v nvidia-smi >/dev/null; then
    apt-get install -y -q ubuntu-drivers-common
    ubuntu-drivers install --gpgpu
fi

# Docker, with the NVIDIA container toolkit as a runtime.
if ! command -v docker >/dev/null; then
    apt-get install -y -q docker.io
fi
if ! command -v nvidia-ctk >/dev/null; then
    keyring=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg
    curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | gpg --dearmor -o "$keyring"
    curl -fsSL https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list \
        | sed "s#deb https://#deb [signed-by=$keyring] https://#" \
        > /etc/apt/sources.list.d/nvidia-container-toolkit.list
    apt-get update -q
    apt-get install -y -q nvidia-container-toolkit
fi
nvidia-ctk runtime configure --runtime=docker
systemctl enable docker.service
systemctl restart docker.service

# The INCL agent, in its own virtual environment, as the systemd unit expects it.
apt-get install -y -q python3-venv curl
python3 -m venv /opt/incl/venv
/opt/incl/venv/bin/pip install -q --upgrade pip
/opt/incl/venv/bin/pip install -q "${INCL_WHEEL}[agent]"
install -m 0644 /tmp/incl-agent.service /etc/systemd/system/incl-agent.service
install -d -m 0755 /etc/incl /var/lib/incl/agent
systemctl daemon-reload
systemctl enable incl-agent.service  # starts once the user-data has written /etc/incl/agent.yaml

# Checks: fail the build rather than ship a broken image.
/opt/incl/venv/bin/python -c "import incl.agent.app, incl.agent.metadata"
docker info --format '{{json .Runtimes}}' | grep -q nvidia
if nvidia-smi -L; then
    docker run --rm --gpus all ubuntu:24.04 nvidia-smi -L
fi

# Nothing of this build in the image: each instance runs its own user-data at first boot.
rm -f "${INCL_WHEEL}" /tmp/incl-agent.service
cloud-init clean --logs
