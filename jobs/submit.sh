#!/usr/bin/env bash
# Submit the search service to a Ray cluster as a Ray job, follow its logs, say where the results are.
#
#   jobs/submit.sh ADDRESS [EXPERIMENT.yaml | shipped name | --smoke] [key=value ...]
#   e.g. jobs/submit.sh http://127.0.0.1:8265 search_spaces/default.yaml budget.trials=4
#
# ADDRESS is the head's dashboard (http://HOST:8265 by default; a bare HOST:PORT gets http://). Keep it
# on the head's loopback and tunnel to it: `ssh -N -L 8265:127.0.0.1:8265 HEAD &`, then
# http://127.0.0.1:8265 (README, Cluster: the head recipe with token auth). Each key=value argument
# reaches the job literally (Ray >= 2.60 CLI, checked below). `ray job stop` is graceful: the job
# saves its state and a re-submit with the same output_dir resumes (RAY_JOB_STOP_WAIT_TIME_S in
# jobs/runtime_env.yaml).
# Cluster shape expected: see jobs/runtime_env.yaml (dependencies baked into the image, one or more
# nodes; the driver runs on the head). Expected run time: the smoke experiment of
# tests/tune/test_job_submit.py takes ~1-2 min on a 2-CPU head (plus ~5 s to upload the code); the
# default experiment ~4 min on 2 idle CPUs (bench/results/tune_default.md), less with more CPUs.
#
# Results: unless an output_dir=... override is given, the experiment writes to
#   ${I2M2_OUTPUT_ROOT:-/tmp/i2m2-runs}/<submission id>
# on the head (an absolute path: the job's own working directory is a temporary unpacked copy of the
# code). For multi-node clusters set I2M2_OUTPUT_ROOT to object storage, e.g.
#   I2M2_OUTPUT_ROOT='s3://BUCKET/i2m2-runs'   (README "Running on a cluster": credentials on every node)
# or to a shared filesystem mounted at the same path on every node (NFS).
#
# Environment:
#   I2M2_OUTPUT_ROOT    where experiments go: a path on the head (default /tmp/i2m2-runs) or s3://, gs://
#   I2M2_SUBMISSION_ID  the job's submission id (default i2m2-<experiment>-<UTC timestamp>)
#   I2M2_NO_WAIT=1      submit and return at once instead of following the logs
#   RAY                 the ray CLI to use (default: ray on PATH)
#   RAY_AUTH_MODE / RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH: Ray >= 2.59 token auth; when a token is
#   available (one of those, or ~/.ray/auth_token) and RAY_AUTH_MODE is unset, token mode is used.
#   Set RAY_AUTH_MODE=disabled for a cluster without token auth.
# Exit status: 0 when the job SUCCEEDED (or was submitted, with I2M2_NO_WAIT=1), 1 otherwise.
set -euo pipefail

usage() { sed -n '2,4p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[[ $# -ge 1 && "$1" != -h && "$1" != --help ]] || usage

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ray_cli="${RAY:-ray}"
# Each argument must reach the job literally: the head runs the entrypoint with /bin/sh. Ray >= 2.60's
# CLI shell-quotes every word (shlex.join); older ones (subprocess.list2cmdline) leave `a;b` and $(...)
# to that shell. So refuse an older CLI instead of letting `name=a;b` run b on the head.
ray_version="$("$ray_cli" --version 2>/dev/null | sed -n 's/.*version \([0-9][0-9.]*\).*/\1/p' || true)"
[[ -n "$ray_version" ]] || { echo "error: cannot run the ray CLI '$ray_cli' (set RAY=/path/to/ray)" >&2; exit 2; }
[[ "$(printf '%s\n' 2.60 "$ray_version" | sort -V | head -n 1)" == 2.60 ]] || {
    echo "error: $ray_cli is Ray $ray_version; jobs/submit.sh needs >= 2.60, whose 'ray job submit' quotes each argument for the head's shell" >&2
    exit 2
}
address="$1"
shift
[[ "$address" == *://* ]] || address="http://$address"

args=()
experiment="default"
if [[ $# -ge 1 && "$1" != *=* ]]; then
    file="$1"
    shift
    # A shipped experiment by name (default, smoke, avmnist, ...; --smoke is smoke), as the tune CLI takes it.
    [[ "$file" == --smoke ]] && file=smoke
    [[ ! -f "$file" && "$file" != */* && -f "$repo/search_spaces/${file%.yaml}.yaml" ]] && file="$repo/search_spaces/${file%.yaml}.yaml"
    [[ -f "$file" ]] || { echo "error: experiment file $file not found" >&2; exit 2; }
    abs="$(cd "$(dirname "$file")" && pwd)/$(basename "$file")"
    # The file travels with the code (working_dir), so it must live inside the repository.
    [[ "$abs" == "$repo"/* ]] || { echo "error: $file must be inside $repo (only the repository is shipped)" >&2; exit 2; }
    args+=("${abs#"$repo"/}")
    experiment="$(basename "$file" .yaml)"
fi

submission_id="${I2M2_SUBMISSION_ID:-i2m2-${experiment}-$(date -u +%Y%m%d-%H%M%S)}"
output_dir=""
for kv in "$@"; do
    [[ "$kv" == output_dir=* ]] && output_dir="${kv#output_dir=}"
done
if [[ -z "$output_dir" ]]; then
    root="${I2M2_OUTPUT_ROOT:-/tmp/i2m2-runs}"
    if [[ "$root" == *://*\?* ]]; then  # a URI with options: the id goes before the query string
        output_dir="${root%%\?*}/$submission_id?${root#*\?}"
    else
        output_dir="$root/$submission_id"
    fi
    args+=("output_dir=$output_dir")
fi
[[ "$output_dir" == /* || "$output_dir" == *://* ]] || { echo "error: output_dir=$output_dir must be absolute (the job runs in a temporary copy of the code)" >&2; exit 2; }
args+=("$@")

if [[ -z "${RAY_AUTH_MODE:-}" ]] && [[ -n "${RAY_AUTH_TOKEN:-}" || -n "${RAY_AUTH_TOKEN_PATH:-}" || -f "$HOME/.ray/auth_token" ]]; then
    export RAY_AUTH_MODE=token
fi

# Separate words: `ray job submit` (>= 2.60, checked above) shell-quotes each one for the head's shell.
entrypoint=(python -m i2m2_ray.tune "${args[@]}")

where() {
    cat <<EOF

job $submission_id: results on the head in $output_dir
  status:  $ray_cli job status --address $address $submission_id
  logs:    $ray_cli job logs --address $address $submission_id   (add -f to follow; the table is at the end)
  stop:    $ray_cli job stop --address $address $submission_id   (re-submitting with output_dir=$output_dir resumes)
  fetch:   ray rsync-down CLUSTER.yaml $output_dir ./runs/$submission_id    (cluster launcher)
           kubectl cp HEAD_POD:$output_dir ./runs/$submission_id             (KubeRay)
           (local head: the files are already in $output_dir)
  report:  python -m i2m2_ray.report '$output_dir'   (any machine that can read it; s3:// needs the AWS_* variables)
  tables:  $output_dir/results.md, results.csv, results.parquet
  curves:  tensorboard --logdir $output_dir --host 127.0.0.1   (on the head, or on the fetched copy)
EOF
}

submit=("$ray_cli" job submit --address "$address" --submission-id "$submission_id"
        --working-dir "$repo" --runtime-env "$repo/jobs/runtime_env.yaml")
if [[ "${I2M2_NO_WAIT:-0}" == 1 ]]; then
    "${submit[@]}" --no-wait -- "${entrypoint[@]}"
    where
    exit 0
fi

trap 'echo; echo "stopped following; the job keeps running"; where; exit 130' INT
set +e
"${submit[@]}" -- "${entrypoint[@]}"
set -e
trap - INT
status_out="$("$ray_cli" job status --address "$address" "$submission_id" 2>&1 || true)"
case "$status_out" in
    *"Job '$submission_id' succeeded"*) status=SUCCEEDED ;;
    *"Job '$submission_id' failed"*) status=FAILED ;;
    *"Job '$submission_id' was stopped"*) status=STOPPED ;;
    *) status="$(grep -oE "Status for job '[^']+': [A-Z]+" <<<"$status_out" | awk '{print $NF}' || true)" ;;
esac
echo
echo "job $submission_id: ${status:-UNKNOWN}"
where
[[ "$status" == SUCCEEDED ]]
