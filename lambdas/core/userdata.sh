#!/bin/bash
# One training run on a fresh instance: log in to ECR, pull the trainer image, run it once
# under a hard time limit, then power off. The instance is launched with
# InstanceInitiatedShutdownBehavior=terminate, so powering off terminates it and billing stops
# as soon as the trainer exits. Nothing is installed: the AMI already has docker and AWS CLI v2.
# cloud-init copies this script's output to the console and /var/log/cloud-init-output.log.
set -euo pipefail

readonly REGION=@REGION@
readonly IMAGE=@IMAGE@
readonly REGISTRY="${IMAGE%%/*}"
readonly TIME_LIMIT_S=@TIME_LIMIT_S@
readonly RUN_VERSION=@RUN_VERSION@

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
