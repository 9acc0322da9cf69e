# The INCL GPU AMI: AWS's Deep Learning Base AMI (Ubuntu 24.04, NVIDIA driver, Docker, NVIDIA container
# toolkit), checked and completed by provision.sh, with the INCL agent installed into /opt/incl/venv and its
# systemd unit enabled. The unit waits for /etc/incl/agent.yaml, which the user-data of each launch writes
# (controller/user-data.sh.tmpl). Build from the repository root:
#
#   python -m build --wheel
#   packer init deploy/packer
#   packer build -var region=us-east-1 -var incl_wheel=dist/incl-0.1.0-py3-none-any.whl deploy/packer
#
# Put the resulting AMI id in the controller's `aws.ami`.

packer {
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-1"
}

variable "incl_wheel" {
  type        = string
  description = "The incl wheel to install (python -m build --wheel)."
}

variable "instance_type" {
  type        = string
  default     = "g5.xlarge"
  description = "A GPU builder, so that the driver and the container toolkit are checked on a real GPU."
}

variable "subnet_id" {
  type        = string
  default     = null
  description = "Where the builder runs; null: the default VPC."
}

variable "volume_size" {
  type    = number
  default = 100
}

variable "ami_name_prefix" {
  type    = string
  default = "incl-gpu"
}

source "amazon-ebs" "gpu" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  ssh_username  = "ubuntu"
  ami_name      = "${var.ami_name_prefix}-${formatdate("YYYYMMDD-hhmmss", timestamp())}"
  imds_support  = "v2.0"

  source_ami_filter {
    filters = {
      name                = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *"
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = ["amazon"]
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = var.volume_size
    volume_type           = "gp3"
    delete_on_termination = true
  }

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  tags = {
    Name        = "${var.ami_name_prefix}"
    "incl:role" = "ami"
  }
}

build {
  sources = ["source.amazon-ebs.gpu"]

  provisioner "file" {
    source      = var.incl_wheel
    destination = "/tmp/${basename(var.incl_wheel)}"
  }

  provisioner "file" {
    source      = "${path.root}/../systemd/incl-agent.service"
    destination = "/tmp/incl-agent.service"
  }

  provisioner "shell" {
    script           = "${path.root}/provision.sh"
    environment_vars = ["INCL_WHEEL=/tmp/${basename(var.incl_wheel)}"]
    execute_command  = "chmod +x {{ .Path }}; sudo -E bash -eu {{ .Path }}"
  }
}
