#!/bin/bash
# One training run on a fresh instance: install the AWS CLI, log in to ECR, pull the trainer
# image, run it once under a hard time limit, then power off. The instance is launched with
# InstanceInitiatedShutdownBehavior=terminate, so powering off terminates it and billing stops
# as soon as the trainer exits.
# The AMI is the ECS-optimised Amazon Linux 2023 image, built from AL2023 *minimal*: it has
# docker, dnf, bash, coreutils and curl, but no AWS CLI (github.com/aws/amazon-ecs-ami,
# al2023.pkr.hcl and release-al2023.auto.pkrvars.hcl; amazonlinux/amazon-linux-2023#625).
# So the CLI is installed first, with dnf from the in-region AL2023 repository (awscli-2,
# docs.aws.amazon.com/linux/al2023/ug/awscli2.html). That is a download of roughly 10 MB
# (the awscli-2 rpm alone was 7.3 MB: amazonlinux/amazon-linux-2023#272) and beats the other
# way round, the standard AL2023 AMI, which has the CLI but no docker (docker 42 MB plus
# containerd 35 MB to install, then a daemon to start: github-aws-runners/
# terraform-aws-github-runner#3741). Estimates and sources: infra/README.md.
# cloud-init copies this script's output to the console and /var/log/cloud-init-output.log.
set -euo pipefail

readonly REGION=@REGION@
readonly IMAGE=@IMAGE@
readonly REGISTRY="${IMAGE%%/*}"
readonly TIME_LIMIT_S=@TIME_LIMIT_S@
readonly RUN_VERSION=@RUN_VERSION@
# The repository can be briefly unreachable at boot (amazonlinux/amazon-linux-2023#135):
# retry a few times, then give up (and power off) rather than idle.
readonly INSTALL_ATTEMPTS=3
readonly INSTALL_RETRY_S=@INSTALL_RETRY_S@

log() {
  printf '%s autoretrain %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "${RUN_VERSION}" "$*"
}

# Whatever happens below (success, a failed step, the time limit, a signal), power off.
# shellcheck disable=SC2317  # reached through the EXIT trap
power_off() {
  local status=$?
  trap - EXIT
  log "exiting with status ${status}; powering off"
  shutdown -h now
  exit "${status}"
}
trap power_off EXIT
trap 'exit 143' TERM INT HUP

log "installing the AWS CLI"
attempt=1
until dnf install -y -q awscli-2; do
  if [ "${attempt}" -ge "${INSTALL_ATTEMPTS}" ]; then
    log "could not install the AWS CLI after ${attempt} attempts"
    exit 1
  fi
  log "dnf failed (attempt ${attempt} of ${INSTALL_ATTEMPTS}); retrying in $((attempt * INSTALL_RETRY_S))s"
  sleep "$((attempt * INSTALL_RETRY_S))"
  attempt=$((attempt + 1))
done

log "logging in to ${REGISTRY}"
aws ecr get-login-password --region "${REGION}" | docker login --username AWS --password-stdin "${REGISTRY}"

log "pulling ${IMAGE}"
docker pull --quiet "${IMAGE}"

# Single-quoted on purpose: the values are data and are never expanded.
# shellcheck disable=SC2016
trainer_env=(
@DOCKER_ENV@
)
log "running the trainer with a ${TIME_LIMIT_S}s limit"
status=0
timeout --kill-after=30 "${TIME_LIMIT_S}" \
  docker run --rm --name autoretrain-trainer "${trainer_env[@]}" "${IMAGE}" || status=$?
if [ "${status}" -eq 124 ]; then
  log "the trainer ran past ${TIME_LIMIT_S}s and was stopped"
fi
log "the trainer exited with status ${status}"
exit "${status}"
