#!/usr/bin/env bash
# Local, real services for newswatch: a single-node Apache Kafka 4.x (KRaft,
# combined broker+controller) and a single-node OpenSearch 2.19, both run as
# plain JVMs from Maven Central jars, bound to 127.0.0.1 only. No Docker.
#
#   deploy/local/services.sh fetch                 # mvn -> .cache/jars (no-op when cached)
#   deploy/local/services.sh start [kafka|opensearch|all]   # waits until ready
#   deploy/local/services.sh stop  [kafka|opensearch|all]
#   deploy/local/services.sh status [kafka|opensearch|all]  # exit 0 iff all ready
#   deploy/local/services.sh restart|logs|clean [kafka|opensearch|all]  # clean: stop + wipe data
#   deploy/local/services.sh smoke                 # end-to-end check of both running services
#   deploy/local/services.sh prestage-flink        # Beam's Flink job-server jar -> ~/.apache_beam
#
# See deploy/local/README.md for ports, env vars and where the logs are.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${NEWSWATCH_CACHE_DIR:-$ROOT/.cache}"
JARS="$CACHE/jars"
RUN="$CACHE/run"

HOST=127.0.0.1
KAFKA_PORT="${NEWSWATCH_KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${NEWSWATCH_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HEAP="${NEWSWATCH_KAFKA_HEAP:-512m}"
OS_PORT="${NEWSWATCH_OPENSEARCH_PORT:-9200}"
OS_TRANSPORT_PORT="${NEWSWATCH_OPENSEARCH_TRANSPORT_PORT:-9300-9400}"
OS_HEAP="${NEWSWATCH_OPENSEARCH_HEAP:-1g}"
START_TIMEOUT="${NEWSWATCH_START_TIMEOUT:-180}"   # seconds, per service
STOP_TIMEOUT="${NEWSWATCH_STOP_TIMEOUT:-30}"      # seconds before SIGKILL
MVN_DEP_PLUGIN="org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
FLINK_JOB_SERVER="org.apache.beam:beam-runners-flink-1.20-job-server:${NEWSWATCH_BEAM_VERSION:-2.75.0}"

SERVICES=(kafka opensearch)
START_MARK="=== newswatch services.sh start"

# ---------------------------------------------------------------- helpers

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

now() { # seconds with fraction
    if [[ -n "${EPOCHREALTIME:-}" ]]; then printf '%s' "${EPOCHREALTIME/,/.}"; else date +%s.%N; fi
}
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

java_major() { # prints the feature version of the given java binary, or nothing
    local v
    v="$("$1" -XshowSettings:properties -version 2>&1 | awk -F' = ' '/^ *java.specification.version =/ {print $2; exit}')" || true
    v="${v#1.}"
    printf '%s' "${v%%.*}"
}

# pick_java MIN MAX: sets JAVA to the first candidate whose version is in
# [MIN, MAX]. NEWSWATCH_JAVA (a java binary) wins when set, with no range check
# beyond MIN.
pick_java() {
    local min="$1" max="$2" c m seen=""
    if [[ -n "${NEWSWATCH_JAVA:-}" ]]; then
        [[ -x "$NEWSWATCH_JAVA" ]] || die "NEWSWATCH_JAVA=$NEWSWATCH_JAVA is not an executable java binary"
        m="$(java_major "$NEWSWATCH_JAVA")"
        [[ -n "$m" && "$m" -ge "$min" ]] || die "NEWSWATCH_JAVA=$NEWSWATCH_JAVA is Java '${m:-?}', need >= $min"
        JAVA="$NEWSWATCH_JAVA"; return 0
    fi
    local candidates=()
    [[ -n "${JAVA_HOME:-}" ]] && candidates+=("$JAVA_HOME/bin/java")
    c="$(command -v java 2>/dev/null || true)"; [[ -n "$c" ]] && candidates+=("$c")
    for c in /usr/lib/jvm/*/bin/java; do [[ -e "$c" ]] && candidates+=("$c"); done
    for c in "${candidates[@]}"; do
        [[ -x "$c" ]] || continue
        m="$(java_major "$c")"
        seen+=" $c(${m:-?})"
        if [[ -n "$m" && "$m" -ge "$min" && "$m" -le "$max" ]]; then JAVA="$c"; return 0; fi
    done
    if [[ -z "$seen" ]]; then
        die "java not found. Install a JDK 17 (Debian: apt-get install -y openjdk-17-jdk-headless) or set JAVA_HOME / NEWSWATCH_JAVA."
    fi
    die "no Java between $min and $max found (saw:$seen). Install openjdk-17-jdk-headless or set NEWSWATCH_JAVA."
}

javac_for() { # the javac of the JDK that the given java belongs to
    local j c
    j="$(readlink -f "$1")"; c="$(dirname "$j")/javac"
    [[ -x "$c" ]] || die "no javac next to $j: a full JDK is needed, not a JRE (Debian: apt-get install -y openjdk-17-jdk-headless)"
    printf '%s' "$c"
}

need_mvn() {
    command -v mvn >/dev/null 2>&1 \
        || die "mvn not found (needed to fetch jars into $JARS). Install Maven (Debian: apt-get install -y maven)."
}

port_open() { # port_open PORT: something accepts TCP connections on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# The JVMs carry -Dnewswatch.service=<svc> -Dnewswatch.cache=<cache dir> so that
# stop/status can tell ours apart from any other process (and another clone's).
find_pids() { # pids of this cache's JVMs for service $1
    local f pid cmd
    for f in /proc/[0-9]*/cmdline; do
        pid="${f#/proc/}"; pid="${pid%/cmdline}"
        cmd="$(tr '\0' '\n' 2>/dev/null <"$f")" || continue
        if grep -qxF -- "-Dnewswatch.service=$1" <<<"$cmd" && grep -qxF -- "-Dnewswatch.cache=$CACHE" <<<"$cmd"; then
            printf '%s\n' "$pid"
        fi
    done
}

pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }

service_pid() { # the running pid of service $1 or nothing; drops stale pid files
    local pf="$RUN/$1/$1.pid" pid=""
    if [[ -f "$pf" ]]; then
        pid="$(cat "$pf")"
        if pid_alive "$pid" && tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -qxF -- "-Dnewswatch.service=$1"; then
            printf '%s' "$pid"; return 0
        fi
        rm -f "$pf"
    fi
    pid="$(find_pids "$1" | head -n1)"
    if [[ -n "$pid" ]]; then printf '%s' "$pid" >"$pf"; printf '%s' "$pid"; fi
}

show_logs() { # show_logs SVC [LINES]: tail of every log file of the service, on stderr
    local f n="${2:-40}"
    for f in "$RUN/$1"/logs/*.log "$RUN/$1"/logs/*.out; do
        [[ -s "$f" ]] || continue
        printf '\n----- last %s lines of %s (since the last start) -----\n' "$n" "$f" >&2
        # only what the last start wrote: the lines after the last start marker
        tac "$f" | sed "/^$START_MARK/q" | tac | tail -n "$n" >&2
    done
    printf '%s\n' '-----' >&2
}

sha() { cat "$@" | sha256sum | awk '{print $1}'; }

# ---------------------------------------------------------------- fetch

# fetch_one NAME EXTRA_SOURCE: jars of deploy/local/NAME/pom.xml into
# $JARS/NAME/lib and EXTRA_SOURCE (a .java file) compiled into $JARS/NAME/classes.
fetch_one() {
    local name="$1" src="$2" quiet="${3:-}" dir="$JARS/$1" pom="$HERE/$1/pom.xml"
    local want; want="$(sha "$pom" "$src")"
    fetched() { [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$want" ]] && compgen -G "$dir/lib/*.jar" >/dev/null; }
    if fetched; then
        [[ -n "$quiet" ]] || log "$name: jars cached in $dir ($(ls "$dir/lib" | wc -l) jars)"
        return 0
    fi
    mkdir -p "$JARS"
    # concurrent fetches (two shells, parallel CI steps) wait for each other
    exec 9>"$JARS/.lock"; flock 9 2>/dev/null || true
    if fetched; then exec 9>&-; return 0; fi
    need_mvn
    local t0; t0="$(now)"
    log "$name: fetching jars with mvn (deploy/local/$name/pom.xml) ..."
    rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
    # shellcheck disable=SC2086
    if ! mvn -B -q ${NEWSWATCH_MVN_ARGS:-} -f "$pom" "$MVN_DEP_PLUGIN:copy-dependencies" \
            -DincludeScope=runtime -DoutputDirectory="$dir.tmp/lib" >"$dir.tmp.mvn.log" 2>&1; then
        cat "$dir.tmp.mvn.log" >&2
        die "$name: mvn failed to fetch the jars (see above)"
    fi
    local javac; javac="$(javac_for "$JAVA")"
    if ! "$javac" -nowarn --release 17 -cp "$dir.tmp/lib/*" -d "$dir.tmp/classes" "$src" >"$dir.tmp.javac.log" 2>&1; then
        cat "$dir.tmp.javac.log" >&2
        die "$name: compiling $src failed"
    fi
    rm -f "$dir.tmp.mvn.log" "$dir.tmp.javac.log"
    printf '%s' "$want" >"$dir.tmp/.stamp"
    rm -rf "$dir"; mv "$dir.tmp" "$dir"
    exec 9>&-
    log "$name: $(ls "$dir/lib" | wc -l) jars ($(du -sh "$dir/lib" | awk '{print $1}')) in $(elapsed "$t0")s"
}

fetch_svc() { # fetch_svc SVC [quiet]
    # shellcheck disable=SC2046
    pick_java $(java_range "$1")
    case "$1" in
        kafka)      fetch_one kafka "$HERE/kafka/Probe.java" "${2:-}" ;;
        opensearch) fetch_one opensearch "$HERE/opensearch/Launcher.java" "${2:-}" ;;
    esac
}

fetch() { # fetch [kafka|opensearch|all]
    local s
    for s in $(targets "${1:-all}"); do fetch_svc "$s"; done
}

# ---------------------------------------------------------------- kafka

kafka_write_config() {
    local d="$RUN/kafka"
    mkdir -p "$d/data" "$d/logs"
    cat >"$d/server.properties" <<EOF
# generated by deploy/local/services.sh; edits are overwritten on start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$d/data
num.partitions=1
auto.create.topics.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
}

kafka_java() { # kafka_java ARGS...: run a Kafka class in the foreground
    "$JAVA" -Xmx256m -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" \
        -Dkafka.logs.dir="$RUN/kafka/logs" -cp "$JARS/kafka/lib/*" "$@"
}

kafka_format() { # format the KRaft storage once
    local d="$RUN/kafka"
    [[ -f "$d/data/meta.properties" ]] && return 0
    if [[ ! -s "$d/cluster.id" ]]; then
        kafka_java kafka.tools.StorageTool random-uuid | tail -n1 | tr -d '[:space:]' >"$d/cluster.id.tmp"
        [[ -s "$d/cluster.id.tmp" ]] || die "kafka: StorageTool random-uuid printed nothing"
        mv "$d/cluster.id.tmp" "$d/cluster.id"
    fi
    log "kafka: formatting storage $d/data (cluster id $(cat "$d/cluster.id"))"
    kafka_java kafka.tools.StorageTool format --ignore-formatted \
        -t "$(cat "$d/cluster.id")" -c "$d/server.properties" >"$d/logs/format.out" 2>&1 \
        || { cat "$d/logs/format.out" >&2; die "kafka: storage format failed"; }
}

kafka_ready() {
    port_open "$KAFKA_PORT" || return 1
    "$JAVA" -Xmx64m -XX:TieredStopAtLevel=1 -Dlog4j2.level=OFF -Dlog4j2.statusLoggerLevel=OFF \
        -cp "$JARS/kafka/classes:$JARS/kafka/lib/*" Probe "$HOST:$KAFKA_PORT" 3000 >"$RUN/kafka/probe.out" 2>&1
}

kafka_launch() {
    local d="$RUN/kafka"
    kafka_write_config
    kafka_format
    # shellcheck disable=SC2086
    ( cd "$d" && exec setsid "$JAVA" -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" \
        -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
        -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties" -Dkafka.logs.dir="$d/logs" \
        ${NEWSWATCH_KAFKA_JAVA_OPTS:-} -Dnewswatch.service=kafka "-Dnewswatch.cache=$CACHE" \
        -cp "$JARS/kafka/lib/*" kafka.Kafka "$d/server.properties" \
        >>"$d/logs/kafka.out" 2>&1 </dev/null ) &
    LAUNCHED_PID=$!
}

kafka_describe() { printf 'PLAINTEXT %s:%s, controller %s:%s' "$HOST" "$KAFKA_PORT" "$HOST" "$KAFKA_CONTROLLER_PORT"; }
kafka_ports() { printf '%s %s' "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; }

# ---------------------------------------------------------------- opensearch

os_write_config() {
    local d="$RUN/opensearch"
    mkdir -p "$d/home/config" "$d/data" "$d/logs" "$d/tmp"
    cp "$HERE/opensearch/log4j2.properties" "$d/home/config/log4j2.properties"
    cat >"$d/home/config/opensearch.yml" <<EOF
# generated by deploy/local/services.sh; edits are overwritten on start
cluster.name: newswatch-local
node.name: newswatch-local
path.data: $d/data
path.logs: $d/logs
network.host: $HOST
http.port: $OS_PORT
transport.port: $OS_TRANSPORT_PORT
discovery.type: single-node
# CI disks can be nearly full: never block writes on disk watermarks
cluster.routing.allocation.disk.threshold_enabled: false
# niofs instead of mmap: no dependency on vm.max_map_count (65530 here)
node.store.allow_mmap: false
EOF
}

os_health() { # prints the cluster health JSON; fails unless at least yellow
    curl -sS --max-time 5 -o - -w '\n%{http_code}' \
        "http://$HOST:$OS_PORT/_cluster/health?wait_for_status=yellow&timeout=2s" 2>/dev/null \
        | awk 'NR==1 {body=$0} END { if ($0 != "200" || body ~ /"timed_out":true/) exit 1; print body }'
}

opensearch_ready() {
    port_open "$OS_PORT" || return 1
    os_health >"$RUN/opensearch/probe.out" 2>&1
}

opensearch_launch() {
    local d="$RUN/opensearch" locale=()
    os_write_config
    # OpenSearch 2.x's own jvm.options uses the COMPAT locale data on JDK 9+ (gone in JDK 23)
    [[ "$(java_major "$JAVA")" -lt 23 ]] && locale=("-Djava.locale.providers=SPI,COMPAT")
    # shellcheck disable=SC2086
    ( cd "$d" && exec setsid "$JAVA" -Xms"$OS_HEAP" -Xmx"$OS_HEAP" -XX:+UseG1GC \
        -Djava.awt.headless=true -Dfile.encoding=UTF-8 -Djna.nosys=true \
        -XX:-OmitStackTraceInFastThrow -Dio.netty.noUnsafe=true -Dio.netty.noKeySetOptimization=true \
        -Dio.netty.recycler.maxCapacityPerThread=0 -Dlog4j.shutdownHookEnabled=false \
        -Dlog4j2.disable.jmx=true -Djava.io.tmpdir="$d/tmp" "${locale[@]}" \
        ${NEWSWATCH_OPENSEARCH_JAVA_OPTS:-} -Dnewswatch.service=opensearch "-Dnewswatch.cache=$CACHE" \
        -cp "$JARS/opensearch/classes:$JARS/opensearch/lib/*" Launcher "$d/home" \
        >>"$d/logs/opensearch.out" 2>&1 </dev/null ) &
    LAUNCHED_PID=$!
}

opensearch_post_start() {
    # One node: indices created without number_of_replicas get 0 replicas and are
    # green, not yellow. Only the persistent cluster setting is honoured (not
    # opensearch.yml), so it is set through the API; it is kept in path.data.
    curl -sS --max-time 10 -o /dev/null -XPUT -H 'Content-Type: application/json' \
        "http://$HOST:$OS_PORT/_cluster/settings" \
        -d '{"persistent":{"cluster.default_number_of_replicas":0}}' \
        || log "opensearch: warning: could not set cluster.default_number_of_replicas=0"
}

opensearch_describe() { printf 'http://%s:%s' "$HOST" "$OS_PORT"; }
opensearch_ports() { printf '%s' "$OS_PORT"; }

# ---------------------------------------------------------------- lifecycle

targets() {
    case "${1:-all}" in
        all|"") printf '%s\n' "${SERVICES[@]}" ;;
        kafka|opensearch) printf '%s\n' "$1" ;;
        *) die "unknown service '$1' (kafka, opensearch or all)" ;;
    esac
}

java_range() { case "$1" in kafka) echo "17 99" ;; opensearch) echo "17 23" ;; esac; }

wait_ready() { # wait_ready SVC PID T0
    local s="$1" pid="$2" t0="$3"
    local deadline=$(( ${t0%.*} + START_TIMEOUT ))
    while :; do
        if "${s}_ready"; then
            log "$s: ready on $("${s}_describe") (pid $pid) after $(elapsed "$t0")s"
            return 0
        fi
        if ! pid_alive "$pid"; then
            rm -f "$RUN/$s/$s.pid"
            show_logs "$s"
            die "$s: the JVM (pid $pid) exited before it became ready; logs in $RUN/$s/logs"
        fi
        if (( $(date +%s) >= deadline )); then
            show_logs "$s"
            log "$s: not ready after ${START_TIMEOUT}s; stopping it"
            stop_one "$s" >/dev/null 2>&1 || true
            die "$s: timed out after ${START_TIMEOUT}s waiting for readiness (NEWSWATCH_START_TIMEOUT); logs in $RUN/$s/logs"
        fi
        sleep 0.5
    done
}

start_one() {
    local s="$1" pid p t0
    # shellcheck disable=SC2046
    pick_java $(java_range "$s")
    mkdir -p "$RUN/$s/logs"
    pid="$(service_pid "$s")"
    if [[ -n "$pid" ]]; then
        if "${s}_ready"; then
            log "$s: already running and ready on $("${s}_describe") (pid $pid)"
            return 0
        fi
        log "$s: already running (pid $pid), waiting for it to become ready"
        wait_ready "$s" "$pid" "$(now)"
        return 0
    fi
    for p in $("${s}_ports"); do
        port_open "$p" && die "$s: port $HOST:$p is already in use by another process (not this checkout's $s). Stop it or set the NEWSWATCH_*_PORT variables."
    done
    fetch_svc "$s" quiet
    t0="$(now)"
    for p in "$RUN/$s/logs/$s.log" "$RUN/$s/logs/$s.out"; do
        printf '%s %s (pid %s)\n' "$START_MARK" "$(date '+%F %T')" "$$" >>"$p"
    done
    log "$s: starting with $JAVA (Java $(java_major "$JAVA")), logs in $RUN/$s/logs"
    "${s}_launch"
    pid="$LAUNCHED_PID"
    # setsid forks when it cannot become a session leader: then find the JVM by its marker
    local _
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        if pid_alive "$pid" && tr '\0' '\n' 2>/dev/null <"/proc/$pid/cmdline" | grep -qxF -- "-Dnewswatch.service=$s"; then break; fi
        p="$(find_pids "$s" | head -n1)"
        if [[ -n "$p" ]]; then pid="$p"; break; fi
        sleep 0.2
    done
    printf '%s' "$pid" >"$RUN/$s/$s.pid"
    wait_ready "$s" "$pid" "$t0"
    if declare -F "${s}_post_start" >/dev/null; then "${s}_post_start"; fi
}

start_many() { # start services in parallel (2 JVMs boot faster side by side), fail if any fails
    local s list pids=() rc=0 t0
    list="$(targets "$1")"
    if [[ "$(wc -l <<<"$list")" -eq 1 ]]; then start_one "$list"; return; fi
    t0="$(now)"
    # fetch first, one after the other (mvn output stays readable)
    for s in $list; do fetch_svc "$s" quiet; done
    for s in $list; do start_one "$s" & pids+=($!); done
    for s in "${pids[@]}"; do wait "$s" || rc=1; done
    (( rc == 0 )) || die "some services did not start (see above); '$0 status' shows which"
    log "all ready after $(elapsed "$t0")s"
}

stop_one() {
    local s="$1" pids p waited=0
    pids="$( { service_pid "$s"; echo; find_pids "$s"; } | awk 'NF && !seen[$0]++')"
    if [[ -z "$pids" ]]; then
        rm -f "$RUN/$s/$s.pid"
        log "$s: not running"
        return 0
    fi
    log "$s: stopping pid(s) ${pids//$'\n'/ }"
    for p in $pids; do kill -TERM "$p" 2>/dev/null || true; done
    while :; do
        local alive=""
        for p in $pids; do pid_alive "$p" && alive+=" $p"; done
        [[ -z "$alive" ]] && break
        if (( waited >= STOP_TIMEOUT * 10 )); then
            log "$s: still running after ${STOP_TIMEOUT}s, sending SIGKILL to$alive"
            for p in $alive; do kill -KILL "$p" 2>/dev/null || true; done
            sleep 0.5
            continue
        fi
        sleep 0.1; waited=$((waited + 1))
    done
    rm -f "$RUN/$s/$s.pid"
    log "$s: stopped"
}

status_one() {
    local s="$1" pid
    pid="$(service_pid "$s")"
    if [[ -z "$pid" ]]; then
        printf '%-11s stopped    (%s)\n' "$s" "$("${s}_describe")"
        return 1
    fi
    # shellcheck disable=SC2046
    pick_java $(java_range "$s")
    if "${s}_ready"; then
        printf '%-11s ready      pid %-8s %s\n' "$s" "$pid" "$("${s}_describe")"
        return 0
    fi
    printf '%-11s starting/unhealthy pid %-8s %s (logs: %s)\n' "$s" "$pid" "$("${s}_describe")" "$RUN/$s/logs"
    return 1
}

prestage_flink() {
    # Beam's FlinkRunner (--flink_master=[local]) looks for the job server jar in
    # ~/.apache_beam/cache/jars/<artifactId>-<version>.jar before downloading it.
    local dest="${NEWSWATCH_BEAM_JAR_CACHE:-$HOME/.apache_beam/cache/jars}"
    local a="${FLINK_JOB_SERVER#*:}"; a="${a%%:*}"
    local v="${FLINK_JOB_SERVER##*:}"
    local f="$dest/$a-$v.jar"
    if [[ -s "$f" ]]; then log "flink job server already staged: $f"; return 0; fi
    need_mvn
    mkdir -p "$dest"
    local t0; t0="$(now)"
    log "fetching $FLINK_JOB_SERVER into $dest ..."
    # shellcheck disable=SC2086
    mvn -B -q ${NEWSWATCH_MVN_ARGS:-} -f "$HERE/kafka/pom.xml" "$MVN_DEP_PLUGIN:copy" \
        -Dartifact="$FLINK_JOB_SERVER" -DoutputDirectory="$dest" \
        || die "mvn could not fetch $FLINK_JOB_SERVER (on this workplace's Maven mirror 2.75.0 was not served when this was written; set NEWSWATCH_BEAM_VERSION to try another Beam version)"
    [[ -s "$f" ]] || die "expected $f after the fetch"
    log "staged $f ($(du -h "$f" | awk '{print $1}')) in $(elapsed "$t0")s"
}

smoke() { # end-to-end check of the running services; cleans up after itself
    local B="http://$HOST:$OS_PORT" J='Content-Type: application/json' idx="newswatch-smoke-$$" out
    status_one kafka >/dev/null || die "smoke: kafka is not ready"
    status_one opensearch >/dev/null || die "smoke: opensearch is not ready"
    log "smoke: kafka metadata ok ($(cat "$RUN/kafka/probe.out"))"
    trap 'curl -s -o /dev/null -XDELETE "'"$B/$idx"'"' EXIT
    curl -sf -XPUT "$B/$idx" -H "$J" -d '{"mappings":{"properties":{
        "title":{"type":"text","analyzer":"german","fields":{"en":{"type":"text","analyzer":"english"},
        "ru":{"type":"text","analyzer":"russian"},"fr":{"type":"text","analyzer":"french"}}}}}}' >/dev/null \
        || die "smoke: could not create an index with the german/english/russian/french analyzers"
    curl -sf -XPUT "$B/$idx/_doc/1?refresh=true" -H "$J" \
        -d '{"title":"Die Regierungen der Länder kritisierten die Gesetze"}' >/dev/null || die "smoke: index doc failed"
    printf '%s\n' '{"index":{"_id":"2"}}' '{"title":"Правительство приняло новые законы"}' \
        '{"index":{"_id":"3"}}' '{"title":"Les gouvernements annoncent des réformes"}' \
        | curl -sf -XPOST "$B/$idx/_bulk?refresh=true" -H 'Content-Type: application/x-ndjson' --data-binary @- \
        | grep -q '"errors":false' || die "smoke: _bulk failed"
    out="$(curl -sf "$B/$idx/_search" -H "$J" -d '{"query":{"match":{"title":"Regierung Gesetz"}},"highlight":{"fields":{"title":{}}}}')"
    grep -q '<em>Regierungen</em>' <<<"$out" || die "smoke: german stemming/highlight failed: $out"
    out="$(curl -sf "$B/$idx/_search" -H "$J" -d '{"query":{"match":{"title.ru":"закон"}},"highlight":{"fields":{"title.ru":{}}}}')"
    grep -q '<em>законы</em>' <<<"$out" || die "smoke: russian search failed: $out"
    log "smoke: opensearch ok (german/russian analyzers, highlight, _bulk)"
}

usage() {
    sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
    local cmd="${1:-}"; shift || true
    local s rc=0
    case "$cmd" in
        fetch|start|stop|status|restart|logs|clean) targets "${1:-all}" >/dev/null ;;  # dies on a bad name
    esac
    case "$cmd" in
        fetch) fetch "${1:-all}" ;;
        start) start_many "${1:-all}" ;;
        stop)
            # stop in reverse order of start
            for s in $(targets "${1:-all}" | tac); do stop_one "$s"; done ;;
        status)
            for s in $(targets "${1:-all}"); do status_one "$s" || rc=1; done
            return "$rc" ;;
        restart)
            for s in $(targets "${1:-all}" | tac); do stop_one "$s"; done
            start_many "${1:-all}" ;;
        logs)
            for s in $(targets "${1:-all}"); do show_logs "$s" "${2:-40}" 2>&1; done ;;
        clean)
            # stop and delete runtime state (topics, indices, logs); jars stay
            for s in $(targets "${1:-all}" | tac); do stop_one "$s"; rm -rf "${RUN:?}/$s"; log "$s: removed $RUN/$s"; done ;;
        smoke) smoke ;;
        prestage-flink) prestage_flink ;;
        -h|--help|help|"") usage ;;
        *) usage; die "unknown command '$cmd'" ;;
    esac
}

main "$@"
