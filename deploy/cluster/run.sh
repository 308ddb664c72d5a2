#!/usr/bin/env bash
# Launch the streaming pipeline on a cluster runner from the worker image, so that
# the launcher and the workers see the same resource and model paths.
#
#   IMAGE=registry/newswatch-worker:0.1.0 deploy/cluster/run.sh flink    --flink_master=jobmanager:8081
#   IMAGE=registry/newswatch-worker:0.1.0 deploy/cluster/run.sh dataflow --project=P --region=R --temp_location=gs://B/tmp
#
# Configuration comes from the environment (NEWSWATCH_KAFKA__BOOTSTRAP_SERVERS,
# NEWSWATCH_INDEX__HOSTS, ...): every NEWSWATCH_* variable is passed through.
set -euo pipefail
: "${IMAGE:?set IMAGE to the worker image built from deploy/cluster/Dockerfile}"
engine=${1:?usage: run.sh flink|dataflow [beam options...]}; shift
case "$engine" in
  flink)    runner=FlinkRunner;    defaults=(--flink_version=1.20 --checkpointing_interval=10000 "--sdk_container_image=$IMAGE") ;;
  dataflow) runner=DataflowRunner; defaults=(--experiments=use_runner_v2 "--sdk_container_image=$IMAGE" --job_name=newswatch-stream) ;;
  *) echo "error: engine must be flink or dataflow, got '$engine'" >&2; exit 2 ;;
esac
opts=()
for o in "${defaults[@]}" "$@"; do opts+=(-o "$o"); done
envs=()
while IFS='=' read -r name _; do envs+=(-e "$name"); done < <(env | grep '^NEWSWATCH_' || true)
if [ -n "${GOOGLE_APPLICATION_CREDENTIALS:-}" ]; then
  envs+=(-v "$GOOGLE_APPLICATION_CREDENTIALS:/creds.json:ro" -e GOOGLE_APPLICATION_CREDENTIALS=/creds.json)
fi
exec docker run --rm -it --network host "${envs[@]}" \
  --entrypoint newswatch "$IMAGE" run --stream --runner "$runner" "${opts[@]}"
