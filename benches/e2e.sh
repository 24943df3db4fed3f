#!/usr/bin/env bash
# End-to-end benchmark: clonelb (round-robin and least-connections) beside HAProxy and nginx,
# all in front of the same three backends, plus "direct" (wrk straight to one backend), on
# this machine, over loopback only. Every load run is bounded (wrk -d, h2load -D) and every
# process this script starts is stopped, by PID, when it exits.
#
#   apt-get install -y wrk haproxy nginx nghttp2-client    # haproxy/nginx/h2load optional
#   benches/e2e.sh                    # 5 interleaved rounds x 5 s at 64 and 256 connections,
#                                     # then the same with two workers per balancer
#   benches/e2e.sh --quick            # 1 round x 3 s at 64 connections, smaller idle test,
#                                     # no two-worker step
#   benches/e2e.sh --clonelb target/release/clonelb --baseline /path/to/old/clonelb
#                                     # before/after CPU per request from paired rounds
#
# Options: --rounds N, --duration S, --conns "64 256", --idle N (0: no idle test), --soak S,
# --no-h2 (neither h2 over TLS nor h2c), --no-h2c, --quick, --workers2 / --no-workers2,
# --targets "direct clonelb-rr clonelb-lc haproxy nginx" (the default).
#   --workers2      (on by default, off with --quick) after everything else, the HTTP/1.1
#                   rounds again with every balancer on BOTH CPUs, unpinned: each one-worker
#                   instance is stopped and started again under taskset -c $LB_CPU,$LOAD_CPU,
#                   so clonelb runs one worker per CPU (2), HAProxy with nbthread 2
#                   ($RUN/haproxy-w2.cfg), nginx with worker_processes 2 ($RUN/nginx-w2.conf).
#                   wrk and the backends stay pinned to $LOAD_CPU, so on 2 cores the balancer
#                   then shares a CPU with the load: that is the point of the comparison. The
#                   tables "..., two workers" have the same columns; direct is not rerun.
#                   --no-workers2 skips the step.
#   clonelb-log     one more target on request: clonelb-rr with the access log on
#                   ([log] access = "json" to a file under $RUN, truncated before each run);
#                   the report adds "clonelb-log vs clonelb-rr" from per-round ratios, e.g.
#                   --targets "clonelb-rr clonelb-log haproxy".
#   --audit SHARE   one more target: clonelb-audit, clonelb-rr with [audit] sample = SHARE
#                   (e.g. 0.1); the report adds "clonelb-audit vs clonelb-rr" from per-round
#                   ratios (CPU per request, req/s, p99). Its replays open their own
#                   connections to the backends, which the new-upstream-connections column
#                   counts.
#   --clonelb BIN   the clonelb binary under test ("the current build"). Default: build
#                   $ROOT/target/release/clonelb with cargo and use it; with --clonelb nothing
#                   is built (unless nginx is missing: then only examples/clone, the fallback
#                   backend, is built).
#   --baseline BIN  a second clonelb build (e.g. the previous commit) run as one more target,
#                   "baseline-rr": round-robin, same config and CPU pinning as clonelb-rr, in
#                   the same interleaved rounds (h1, h2 when clonelb does h2, h2c when it
#                   answers h2c, idle memory, the two-worker step). It
#                   is added automatically; "baseline-lc" (least-connections) can be named in
#                   --targets too, and naming any baseline-* there replaces the automatic
#                   baseline-rr. Each clonelb-X / baseline-X pair runs back to back in every
#                   round, in alternating order, and the report adds per connection count a
#                   line "clonelb-rr vs baseline-rr: CPU µs/req A vs B (R x), req/s R x, ..."
#                   where the ratios (current / baseline) are medians of per-round ratios.
#
# Reports, per target and connection count, the medians over interleaved rounds of req/s,
# p50, p99, CPU time per request (user+sys of the target's processes / requests served) and
# new upstream connections, with ratios to HAProxy; h2 over TLS and h2c (cleartext HTTP/2 by
# prior knowledge: clonelb's http listener, HAProxy "proto h2" on 18201, nginx "listen
# 18211 http2") with h2load -c64 -m10: req/s, CPU per request, new upstream connections;
# resident memory per idle keep-alive client connection; and, with --soak S, RSS growth over
# S seconds of constant load. Every wrk and h2load run follows a 1 s warm-up.
#
# New upstream connections: the nginx backends serve stub_status on 127.0.0.1:9009; its
# "accepts" counter, read right before and after a measured run (not the warm-up), gives the
# TCP connections the balancer opened to the backends during that run (for direct: wrk's
# own, c + 1 as wrk first checks the address). "n/a" with the examples/clone backends.
#
# Layout (2 cores): the balancer under test on CPU $LB_CPU (default 1), wrk, h2load, the
# backends and the idle-connection client on CPU $LOAD_CPU (default 0). clonelb is started
# under taskset on that one CPU, so it runs one worker, like HAProxy nbthread 1 and nginx
# worker_processes 1. The two-worker step is the exception (see --workers2).
# Ports: 9001-9003 backends, 9009 their stub_status, 18001/18401/18201 HAProxy h1/h2/h2c,
# 18011/18411/18211 nginx, 18031/18431 clonelb-rr, 18032/18432 -lc, 18035/18435 clonelb-log,
# 18033/18433 and 18034/18434 the baseline.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${BENCH_RUN:-/tmp/clonelb-e2e}
ROUNDS=5
DURATION=5
CONNS="64 256"
IDLE=10000
SOAK=0
DO_H2=1
DO_H2C=1
WORKERS2=1
LB_CPU=${LB_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
TARGETS="direct clonelb-rr clonelb-lc haproxy nginx"
CLONELB=""
BASELINE=""
AUDIT=""

while [[ $# -gt 0 ]]; do
  case $1 in
    --rounds) ROUNDS=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    --idle) IDLE=$2; shift 2;;
    --soak) SOAK=$2; shift 2;;
    --no-h2) DO_H2=0; DO_H2C=0; shift;;
    --no-h2c) DO_H2C=0; shift;;
    --workers2) WORKERS2=1; shift;;
    --no-workers2) WORKERS2=0; shift;;
    --targets) TARGETS=$2; shift 2;;
    --clonelb) CLONELB=$2; shift 2;;
    --baseline) BASELINE=$2; shift 2;;
    --audit) AUDIT=$2; shift 2;;
    --quick) ROUNDS=1; DURATION=3; CONNS=64; IDLE=2000; WORKERS2=0; shift;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0;;
    *) echo "e2e.sh: unknown option $1" >&2; exit 2;;
  esac
done

die() { echo "e2e.sh: $*" >&2; exit 1; }
command -v wrk >/dev/null || die "wrk is needed: apt-get install -y wrk"
command -v taskset >/dev/null || die "taskset is needed (util-linux)"
command -v python3 >/dev/null || die "python3 is needed"
abs_bin() {  # abs_bin PATH: PATH made absolute
  echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
}
if [[ -n $CLONELB ]]; then
  [[ -f $CLONELB && -x $CLONELB ]] || die "--clonelb $CLONELB: not an executable file"
  CLONELB=$(abs_bin "$CLONELB")
fi
if [[ -n $BASELINE ]]; then
  [[ -f $BASELINE && -x $BASELINE ]] || die "--baseline $BASELINE: not an executable file"
  BASELINE=$(abs_bin "$BASELINE")
  [[ " $TARGETS " = *" baseline-"* ]] || TARGETS="$TARGETS baseline-rr"
else
  for t in $TARGETS; do
    [[ $t = baseline-* ]] && die "target $t needs --baseline BIN"
  done
fi

# ------------------------------------------------------------------ processes we own
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
}
trap cleanup EXIT INT TERM

started() { PIDS+=("$1"); }
stop_pid() {  # stop_pid PID: TERM, KILL after 5 s, reap it and forget it
  local pid=$1 p keep=()
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 50); do   # a zombie (exited, not yet reaped) counts as gone
    [[ $(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) = [^Z] ]] || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  for p in "${PIDS[@]}"; do [[ $p = "$pid" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

wait_port() {  # wait_port PORT: until something accepts on 127.0.0.1:PORT (max 10 s)
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  die "nothing listens on 127.0.0.1:$1"
}

BASELINE_PORTS=""
[[ -n $BASELINE ]] && BASELINE_PORTS="18033 18034 18433 18434"
LOG_PORTS=""
[[ " $TARGETS " = *" clonelb-log "* ]] && LOG_PORTS="18035 18435"
if [[ -n $AUDIT ]]; then
  [[ " $TARGETS " = *" clonelb-audit "* ]] || TARGETS="$TARGETS clonelb-audit"
  [[ " $TARGETS " = *" clonelb-rr "* ]] || TARGETS="clonelb-rr $TARGETS"
  LOG_PORTS="$LOG_PORTS 18036 18436"
fi
for port in 9001 9002 9003 9009 18001 18011 18201 18211 18031 18032 18401 18411 18431 18432 \
    $BASELINE_PORTS $LOG_PORTS; do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && die "port $port is in use; stop what uses it first"
done

rm -rf "$RUN"; mkdir -p "$RUN/tmp" "$RUN/tls"
render() { sed "s#@RUN@#$RUN#g" "$ROOT/benches/conf/$1" > "$RUN/$1"; }

if [[ -z $CLONELB ]]; then
  echo "building clonelb (release)…" >&2
  (cd "$ROOT" && cargo build --release --quiet --bin clonelb --example clone) || die "cargo build failed"
  CLONELB="$ROOT/target/release/clonelb"
elif ! command -v nginx >/dev/null; then
  echo "building examples/clone (release), the backends without nginx…" >&2
  (cd "$ROOT" && cargo build --release --quiet --example clone) || die "cargo build failed"
fi

# ------------------------------------------------------------------ TLS material (h2 step)
HAVE_TLS=0
if [[ $DO_H2 = 1 ]] && command -v openssl >/dev/null && command -v h2load >/dev/null; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -keyout "$RUN/tls/key.pem" -out "$RUN/tls/cert.pem" >/dev/null 2>&1 \
    && cat "$RUN/tls/cert.pem" "$RUN/tls/key.pem" > "$RUN/tls/combined.pem" && HAVE_TLS=1
fi

# ------------------------------------------------------------------ backends
declare -A PORT H2PORT H2CPORT ROOTPID
NGINX_VERSION=$(nginx -v 2>&1 | sed -n 's#.*nginx/\([0-9.]*\).*#\1#p')
if command -v nginx >/dev/null; then
  render backends.nginx.conf
  taskset -c "$LOAD_CPU" nginx -e "$RUN/backends.startup.log" -p "$RUN/" -c "$RUN/backends.nginx.conf" &
  started $!
  BACKEND_DESC="nginx, 1 worker"
else
  for i in 1 2 3; do
    taskset -c "$LOAD_CPU" "$ROOT/target/release/examples/clone" --listen "127.0.0.1:900$i" --name "clone$i" >/dev/null &
    started $!
  done
  BACKEND_DESC="examples/clone (nginx not installed)"
fi
for p in 9001 9002 9003; do wait_port $p; done
PORT[direct]=9001; ROOTPID[direct]=${PIDS[0]}

# New upstream connections: the nginx backends' stub_status (127.0.0.1:9009) counts the
# connections they accept; read before and after a measured run, the difference less the
# second read's own connection is what the target opened to the backends during the run.
backend_accepts() {  # connections the nginx backends have accepted so far, this read's included
  local out
  out=$( { exec 3<>/dev/tcp/127.0.0.1/9009 && printf 'GET / HTTP/1.0\r\n\r\n' >&3 \
    && timeout 5 cat <&3; } 2>/dev/null )
  awk 'f { print $1; exit } /^server accepts/ { f = 1 }' <<<"$out"
}
up_conns() {  # up_conns BEFORE AFTER: connections accepted in between ("" without stub_status)
  [[ -n $1 && -n $2 ]] && echo $(($2 - $1 - 1))
}
HAVE_STATUS=0
if [[ $BACKEND_DESC = nginx* ]]; then
  wait_port 9009
  a=$(backend_accepts); b=$(backend_accepts)
  if [[ -n $a && $(up_conns "$a" "$b") = 0 ]]; then HAVE_STATUS=1
  else echo "e2e.sh: the backends' stub_status does not answer; no upstream connection counts" >&2; fi
fi
accepts() { [[ $HAVE_STATUS = 1 ]] && backend_accepts; }

# ------------------------------------------------------------------ targets
clonelb_config() {  # clonelb_config BIN NAME STRATEGY PORT H2PORT [ACCESS_LOG] -> $RUN/NAME.toml
  local bin=$1 conf="$RUN/$2.toml"; shift 2
  {
    if [[ -n ${4:-} ]]; then
      printf '[log]\naccess = "json"\naccess_path = "%s"\n' "$4"
    fi
    if [[ -n ${5:-} ]]; then
      printf '[audit]\nsample = %s\n' "$5"
    fi
    echo "[listen]"
    echo "http = \"127.0.0.1:$2\""
    if [[ $HAVE_TLS = 1 ]]; then
      echo "https = \"127.0.0.1:$3\""
      echo "tls_cert = \"$RUN/tls/cert.pem\""
      echo "tls_key = \"$RUN/tls/key.pem\""
    fi
    echo "[balancer]"
    echo "strategy = \"$1\""
    for i in 1 2 3; do printf '[[backend]]\naddress = "127.0.0.1:900%s"\n' "$i"; done
  } > "$conf"
  # An older clonelb without an https listener: plain HTTP only.
  if ! "$bin" check "$conf" >/dev/null 2>&1; then
    sed -i '/^https =/d; /^tls_cert =/d; /^tls_key =/d' "$conf"
    return 1
  fi
}

WORKERS=1   # 2 in the two-worker step: balancers on $LB_CPU and $LOAD_CPU, two workers each
lb_cpus() { if [[ $WORKERS = 2 ]]; then echo "$LB_CPU,$LOAD_CPU"; else echo "$LB_CPU"; fi; }
start_target() {  # start_target NAME
  local w=""; [[ $WORKERS = 2 ]] && w=-w2   # the two-worker instances' logs and configs
  case $1 in
    clonelb-rr|clonelb-lc|baseline-rr|baseline-lc|clonelb-log|clonelb-audit)
      local strategy=round-robin port=18031 h2=18431 bin=$CLONELB log="" audit=""
      [[ $1 = *-lc ]] && { strategy=least-connections; port=18032; h2=18432; }
      # the baseline build: same config on ports two above
      [[ $1 = baseline-* ]] && { bin=$BASELINE; port=$((port + 2)); h2=$((h2 + 2)); }
      local conf=${1%%-*}-$strategy   # clonelb-round-robin, baseline-least-connections, ...
      [[ $1 = clonelb-log ]] && { port=18035; h2=18435; conf=clonelb-log; log=$RUN/access.log; }
      [[ $1 = clonelb-audit ]] && { port=18036; h2=18436; conf=clonelb-audit; audit=$AUDIT; }
      if clonelb_config "$bin" "$conf" $strategy $port $h2 "$log" "$audit"; then H2PORT[$1]=$h2; fi
      H2CPORT[$1]=$port   # the plain listener takes HTTP/2 by prior knowledge too
      # one worker per CPU it may run on: 1 under taskset -c $LB_CPU, 2 on both CPUs
      CLONELB_LOG=warn taskset -c "$(lb_cpus)" "$bin" run --config "$RUN/$conf.toml" \
        2>"$RUN/$1$w.log" &
      started $!; ROOTPID[$1]=$!; PORT[$1]=$port;;
    haproxy)
      command -v haproxy >/dev/null || return 1
      render haproxy.cfg
      [[ $HAVE_TLS = 1 ]] || sed -i '/^frontend fe_h2$/,/default_backend/d' "$RUN/haproxy.cfg"
      if [[ $WORKERS = 2 ]]; then
        sed 's/^\( *nbthread\) 1\b/\1 2/' "$RUN/haproxy.cfg" > "$RUN/haproxy-w2.cfg"
        grep -q '^ *nbthread 2\b' "$RUN/haproxy-w2.cfg" || die "haproxy.cfg: no 'nbthread 1' to make 2"
      fi
      taskset -c "$(lb_cpus)" haproxy -db -f "$RUN/haproxy$w.cfg" 2>"$RUN/haproxy$w.log" &
      started $!; ROOTPID[$1]=$!; PORT[$1]=18001; H2CPORT[$1]=18201
      [[ $HAVE_TLS = 1 ]] && H2PORT[$1]=18401;;
    nginx)
      command -v nginx >/dev/null || return 1
      render nginx.conf
      [[ $HAVE_TLS = 1 ]] || sed -i '/18411/d; /ssl_certificate/d' "$RUN/nginx.conf"
      # nginx >= 1.25.1 turns HTTP/2 on with "http2 on;" ("listen ... http2" is deprecated)
      if [[ $(printf '%s\n' 1.25.1 "$NGINX_VERSION" | sort -V | head -1) = 1.25.1 ]]; then
        sed -i 's/^\( *listen [^ ]*\) ssl http2 /\1 ssl /; s/^\( *listen 127.0.0.1:18211\) http2 \(.*\);/\1 \2; http2 on;/' "$RUN/nginx.conf"
      fi
      if [[ $WORKERS = 2 ]]; then
        sed 's/^worker_processes 1;/worker_processes 2;/; s/nginx-lb\.\(pid\|error\.log\)/nginx-lb-w2.\1/' \
          "$RUN/nginx.conf" > "$RUN/nginx-w2.conf"
        grep -q '^worker_processes 2;' "$RUN/nginx-w2.conf" || die "nginx.conf: no 'worker_processes 1;' to make 2"
      fi
      taskset -c "$(lb_cpus)" nginx -e "$RUN/nginx-lb$w.startup.log" -p "$RUN/" -c "$RUN/nginx$w.conf" &
      started $!; ROOTPID[$1]=$!; PORT[$1]=18011; H2CPORT[$1]=18211
      [[ $HAVE_TLS = 1 ]] && H2PORT[$1]=18411;;
    direct) return 0;;
  esac
  wait_port "${PORT[$1]}"
}

ORDER=()   # the targets, each baseline-X right after its clonelb-X
for t in $TARGETS; do
  [[ $t = baseline-* && " $TARGETS " = *" clonelb-${t#baseline-} "* ]] && continue
  ORDER+=("$t")
  [[ $t = clonelb-* && " $TARGETS " = *" baseline-${t#clonelb-} "* ]] && ORDER+=("baseline-${t#clonelb-}")
done
ACTIVE=()
for t in "${ORDER[@]}"; do
  if start_target "$t"; then ACTIVE+=("$t"); else echo "skipping $t (not installed)" >&2; fi
done
# Interleaving slots: a target alone, or a pair "clonelb-X baseline-X" that always runs back
# to back (clonelb first in odd rounds, baseline first in even ones). Without --baseline
# every slot is one target, in ACTIVE's order.
make_slots() {  # make_slots TARGET...: SLOTS for these targets
  SLOTS=()
  local t
  for t in "$@"; do
    if [[ $t = clonelb-* && " $* " = *" baseline-${t#clonelb-} "* ]]; then
      SLOTS+=("$t baseline-${t#clonelb-}")
    elif [[ $t = baseline-* && " $* " = *" clonelb-${t#baseline-} "* ]]; then
      continue
    else
      SLOTS+=("$t")
    fi
  done
}
make_slots "${ACTIVE[@]}"
round_order() {  # round_order ROUND ROTATE: the targets of one round, one per line
  local n=${#SLOTS[@]} i slot a b
  for i in $(seq 0 $((n - 1))); do
    slot=${SLOTS[$(( $2 ? (i + $1) % n : i ))]}
    read -r a b <<<"$slot"
    if [[ -n $b && $(($1 % 2)) = 0 ]]; then echo "$b"; echo "$a"
    else echo "$a"; [[ -n $b ]] && echo "$b"; fi
  done
}

# a process and all its descendants, one PID per line
tree_pids() {
  local pids=("$1")
  while [[ ${#pids[@]} -gt 0 ]]; do
    printf '%s\n' "${pids[@]}"
    local next=()
    for p in "${pids[@]}"; do
      for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do next+=("$c"); done
    done
    pids=("${next[@]}")
  done
}
tree_ticks() {  # user+sys clock ticks of a process tree
  local t=0
  for p in $(tree_pids "$1"); do
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}' || echo 0)))
  done
  echo $t
}
tree_rss_kib() {  # resident KiB of a process tree
  local kib=0
  for p in $(tree_pids "$1"); do
    kib=$((kib + $(awk '/^VmRSS/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo $kib
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

to_us() {  # wrk latency ("812.00us", "1.20ms", "2.01s") -> microseconds
  awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
}

RESULTS=$RUN/results.csv
echo "kind,conns,target,round,rps,p50_us,p99_us,us_per_req,errors,up_conns" > "$RESULTS"

# ------------------------------------------------------------------ HTTP/1.1 rounds
run_h1() {  # run_h1 KIND CONNS ROUND TARGET: a 1 s warm-up, then one measured wrk run
  local kind=$1 c=$2 r=$3 t=$4 url="http://127.0.0.1:${PORT[$4]}/"
  local out t0 t1 a0 a1 req rps p50 p99 errs us up
  [[ $t = clonelb-log ]] && : > "$RUN/access.log"   # keep /tmp small; O_APPEND goes on
  taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d1s "$url" >/dev/null 2>&1   # warm-up
  a0=$(accepts); t0=$(tree_ticks "${ROOTPID[$t]}")
  out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$c" -d"${DURATION}s" --latency "$url" 2>&1)
  t1=$(tree_ticks "${ROOTPID[$t]}"); a1=$(accepts)
  req=$(awk '/requests in/{print $1}' <<<"$out")
  rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
  p50=$(to_us "$(awk '$1=="50%"{print $2}' <<<"$out")")
  p99=$(to_us "$(awk '$1=="99%"{print $2}' <<<"$out")")
  errs=$(awk '/Non-2xx/{e+=$NF} /Socket errors/{gsub(/,/,""); e+=$4+$6+$8+$10} END{print e+0}' <<<"$out")
  us=$(awk -v a="$t0" -v b="$t1" -v n="${req:-0}" -v k="$TICK_US" 'BEGIN{ if (n>0) printf "%.2f", (b-a)*k/n; else print "nan" }')
  up=$(up_conns "$a0" "$a1")
  echo "$kind,$c,$t,$r,$rps,$p50,$p99,$us,$errs,$up" >> "$RESULTS"
  printf '  c=%-4s round %s %-11s %10s req/s  p99 %8sus  %6s us/req  %5s new upstream conns\n' \
    "$c" "$r" "$t" "$rps" "$p99" "$us" "${up:-n/a}" >&2
}
echo "HTTP/1.1: ${#ACTIVE[@]} targets x $ROUNDS rounds x ${DURATION}s at c=$CONNS" >&2
for c in $CONNS; do
  for r in $(seq "$ROUNDS"); do
    # interleave, rotating the starting target each round
    for t in $(round_order "$r" 1); do run_h1 h1 "$c" "$r" "$t"; done
  done
done

# ------------------------------------------------------------------ h2 over TLS, h2c
run_h2() {  # run_h2 KIND ROUND TARGET URL: a 1 s warm-up, then one measured h2load run
  local kind=$1 r=$2 t=$3 url=$4 out t0 t1 a0 a1 rps req errs us up
  [[ $t = clonelb-log ]] && : > "$RUN/access.log"
  taskset -c "$LOAD_CPU" h2load -t1 -c64 -m10 -D 1 "$url" >/dev/null 2>&1   # warm-up
  a0=$(accepts); t0=$(tree_ticks "${ROOTPID[$t]}")
  out=$(taskset -c "$LOAD_CPU" h2load -t1 -c64 -m10 -D "$DURATION" "$url" 2>&1)
  t1=$(tree_ticks "${ROOTPID[$t]}"); a1=$(accepts)
  rps=$(awk '/^finished in/{print $4}' <<<"$out")
  # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
  req=$(awk '/^requests:/{print $8}' <<<"$out")
  errs=$(awk '/^requests:/{print $10 + 0}' <<<"$out")
  us=$(awk -v a="$t0" -v b="$t1" -v n="${req:-0}" -v k="$TICK_US" 'BEGIN{ if (n>0) printf "%.2f", (b-a)*k/n; else print "nan" }')
  up=$(up_conns "$a0" "$a1")
  echo "$kind,64,$t,$r,$rps,,,$us,${errs:-0},$up" >> "$RESULTS"
  printf '  %-3s round %s %-11s %10s req/s  %6s us/req  %5s new upstream conns\n' \
    "$kind" "$r" "$t" "$rps" "$us" "${up:-n/a}" >&2
}
if [[ $HAVE_TLS = 1 ]]; then
  echo "h2 over TLS (h2load -c64 -m10):" >&2
  for r in $(seq "$ROUNDS"); do
    for t in $(round_order "$r" 0); do
      [[ -n ${H2PORT[$t]:-} ]] && run_h2 h2 "$r" "$t" "https://127.0.0.1:${H2PORT[$t]}/"
    done
  done
fi
if [[ $DO_H2C = 1 ]] && command -v h2load >/dev/null; then
  # a target joins if one request by prior knowledge succeeds (an older build may lack h2c)
  for t in "${ACTIVE[@]}"; do
    [[ -n ${H2CPORT[$t]:-} ]] || continue
    ok=$(timeout 10 taskset -c "$LOAD_CPU" h2load -t1 -c1 -n1 "http://127.0.0.1:${H2CPORT[$t]}/" 2>&1 \
      | awk '/^requests:/{print $8}')
    [[ $ok = 1 ]] || { echo "  $t does not answer h2c on ${H2CPORT[$t]}; left out of the h2c step" >&2; unset "H2CPORT[$t]"; }
  done
  echo "h2c, HTTP/2 by prior knowledge (h2load -c64 -m10):" >&2
  for r in $(seq "$ROUNDS"); do
    for t in $(round_order "$r" 0); do
      [[ -n ${H2CPORT[$t]:-} ]] && run_h2 h2c "$r" "$t" "http://127.0.0.1:${H2CPORT[$t]}/"
    done
  done
fi

# ------------------------------------------------------------------ memory per idle connection
MEM=$RUN/memory.csv
echo "target,idle_ok,rss_before_kib,rss_after_kib,kib_per_conn" > "$MEM"
if [[ $IDLE -gt 0 ]]; then
  echo "memory with $IDLE idle keep-alive connections:" >&2
  for t in "${ACTIVE[@]}"; do
    [[ $t = direct ]] && continue
    before=$(tree_rss_kib "${ROOTPID[$t]}")
    coproc IDLEC { exec taskset -c "$LOAD_CPU" python3 "$ROOT/benches/idle_conns.py" "${PORT[$t]}" "$IDLE"; }
    idle_pid=$IDLEC_PID; started "$idle_pid"
    read -r -t 120 line <&"${IDLEC[0]}" || line="READY ok=0 failed=$IDLE"
    sleep 1
    after=$(tree_rss_kib "${ROOTPID[$t]}")
    ok=$(sed 's/.*ok=\([0-9]*\).*/\1/' <<<"$line")
    per=$(awk -v a="$before" -v b="$after" -v n="$ok" 'BEGIN{ if (n>0) printf "%.2f", (b-a)/n; else print "nan" }')
    echo "$t,$ok,$before,$after,$per" >> "$MEM"
    printf '  %-11s %6s conns  RSS %8s -> %8s KiB  %6s KiB/conn\n' "$t" "$ok" "$before" "$after" "$per" >&2
    kill -TERM "$idle_pid" 2>/dev/null; wait "$idle_pid" 2>/dev/null
    sleep 1   # let the balancer see the closes before the next target is measured
  done
fi

# ------------------------------------------------------------------ soak
if [[ $SOAK -gt 0 ]]; then
  t=clonelb-rr
  echo "soak: ${SOAK}s of c=64 load on $t" >&2
  taskset -c "$LOAD_CPU" wrk -t1 -c64 -d10s "http://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1
  first=$(tree_rss_kib "${ROOTPID[$t]}")
  taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${SOAK}s" "http://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1
  last=$(tree_rss_kib "${ROOTPID[$t]}")
  echo "soak,$t,$first,$last" > "$RUN/soak.csv"
  printf '  RSS after 10 s: %s KiB, after %s s more: %s KiB\n' "$first" "$SOAK" "$last" >&2
fi

# ------------------------------------------------------------------ two workers
# The HTTP/1.1 rounds again with every balancer on both CPUs: each one-worker instance is
# stopped and started again on $LB_CPU,$LOAD_CPU (clonelb: two workers; HAProxy nbthread 2;
# nginx worker_processes 2), while wrk and the backends stay on $LOAD_CPU.
if [[ $WORKERS2 = 1 ]]; then
  W2=()
  for t in "${ACTIVE[@]}"; do [[ $t = direct ]] || W2+=("$t"); done
  if [[ ${#W2[@]} -gt 0 ]]; then
    echo "HTTP/1.1, two workers on CPUs $LB_CPU,$LOAD_CPU: ${#W2[@]} targets x $ROUNDS rounds x ${DURATION}s at c=$CONNS" >&2
    for t in "${W2[@]}"; do stop_pid "${ROOTPID[$t]}"; done
    WORKERS=2
    for t in "${W2[@]}"; do
      start_target "$t" || die "$t did not start with two workers"
      pid=${ROOTPID[$t]}
      case $t in
        nginx) n=$(($(tree_pids "$pid" | wc -l) - 1)); what="worker processes";;
        haproxy) n=$(ls "/proc/$pid/task" | wc -l); what=threads;;
        *) n=$(cat /proc/"$pid"/task/*/comm | grep -c '^clonelb-worker'); what="worker threads";;
      esac
      echo "  $t: $n $what, CPUs $(awk '/^Cpus_allowed_list/{print $2}' "/proc/$pid/status")" >&2
    done
    make_slots "${W2[@]}"
    for c in $CONNS; do
      for r in $(seq "$ROUNDS"); do
        for t in $(round_order "$r" 1); do run_h1 h1w2 "$c" "$r" "$t"; done
      done
    done
  fi
fi

# ------------------------------------------------------------------ report
python3 - "$RESULTS" "$MEM" "$RUN/soak.csv" "$BACKEND_DESC" "$ROUNDS" "$DURATION" \
  "$CLONELB" "$BASELINE" <<'EOF'
import csv, os, statistics, sys
results, mem, soak, backends, rounds, duration, clonelb, baseline = sys.argv[1:9]
rows = list(csv.DictReader(open(results)))
def med(xs):
    xs = [float(x) for x in xs if x not in ("", "nan")]
    return statistics.median(xs) if xs else float("nan")
def fmt(x, d=0):
    return "n/a" if x != x else f"{x:,.{d}f}"
def ratio(a, b):
    return "n/a" if a != a or b != b or b == 0 else f"{a / b:.2f}"
print(f"\n## clonelb end-to-end benchmark\n")
print(f"backends: {backends}; medians of {rounds} interleaved rounds of {duration} s; "
      "balancer on one CPU (both in the two-worker tables), load generator and backends on "
      "the other; loopback only. New upstream conns: TCP connections the backends accepted "
      "during the measured run (not its warm-up), i.e. opened by the balancer; for direct, "
      "wrk's own (its connections plus one address check).\n")
if baseline:
    print(f"clonelb-*: {clonelb}\nbaseline-*: {baseline}\n")
def num(x):
    return float(x) if x not in ("", "nan") else float("nan")
def paired(cur, new, old, key):
    """per-round ratios new/old of one column, over the rounds where both have a value"""
    pairs = {}
    for r in cur:
        pairs.setdefault(r["round"], {})[r["target"]] = r
    out = []
    for p in pairs.values():
        if new in p and old in p:
            a, b = num(p[new][key]), num(p[old][key])
            if a == a and b == b and b != 0:
                out.append(a / b)
    return out
ORDER = list(dict.fromkeys(r["target"] for r in rows))   # as in the first table
TITLES = {"h1": "HTTP/1.1 keep-alive (wrk)",
          "h2": "HTTP/2 over TLS (h2load -m10)",
          "h2c": "HTTP/2 cleartext (h2c, h2load -m10)",
          "h1w2": "HTTP/1.1 keep-alive (wrk), two workers"}
for kind in TITLES:
    sel = [r for r in rows if r["kind"] == kind]
    if not sel:
        continue
    for c in sorted({int(r["conns"]) for r in sel}):
        cur = [r for r in sel if int(r["conns"]) == c]
        targets = sorted(dict.fromkeys(r["target"] for r in cur), key=ORDER.index)
        m = {t: {k: med([r[k] for r in cur if r["target"] == t])
                 for k in ("rps", "p50_us", "p99_us", "us_per_req", "errors", "up_conns")}
             for t in targets}
        ha = m.get("haproxy", {})
        h1 = kind.startswith("h1")
        print(f"### {TITLES[kind]}, {c} connections\n")
        if kind == "h1w2":
            print("Every balancer on both CPUs, unpinned, with two workers (clonelb started on both "
                  "CPUs: one worker per CPU; HAProxy nbthread 2; nginx worker_processes 2), so it "
                  "shares a CPU with wrk and the backends, which stay pinned.\n")
        # h2load gives no percentiles: the h2 tables have no latency columns
        print("| target | req/s | " + ("p50 | p99 | " if h1 else "") + "CPU µs/req | req/s × HAProxy | "
              + ("p99 × HAProxy | " if h1 else "") + "µs/req × HAProxy | new upstream conns | errors |")
        print("|---|---:|" + ("---:|" * 8 if h1 else "---:|" * 5))
        for t in targets:
            v = m[t]
            cells = [t, fmt(v["rps"])]
            if h1:
                cells += [f"{fmt(v['p50_us'])} µs", f"{fmt(v['p99_us'])} µs"]
            cells += [fmt(v["us_per_req"], 2), ratio(v["rps"], ha.get("rps", float("nan")))]
            if h1:
                cells.append(ratio(v["p99_us"], ha.get("p99_us", float("nan"))))
            cells += [ratio(v["us_per_req"], ha.get("us_per_req", float("nan"))),
                      fmt(v["up_conns"]), fmt(v["errors"])]
            print("| " + " | ".join(cells) + " |")
        if "clonelb-rr" in m and "clonelb-lc" in m:
            pairs = {}
            for r in cur:
                pairs.setdefault(r["round"], {})[r["target"]] = r
            rr = [float(p["clonelb-lc"]["rps"]) / float(p["clonelb-rr"]["rps"])
                  for p in pairs.values() if "clonelb-lc" in p and "clonelb-rr" in p]
            cpu = [float(p["clonelb-lc"]["us_per_req"]) / float(p["clonelb-rr"]["us_per_req"])
                   for p in pairs.values() if "clonelb-lc" in p and "clonelb-rr" in p
                   and p["clonelb-rr"]["us_per_req"] not in ("", "nan")]
            if rr:
                print(f"\nleast-connections / round-robin, paired per round (median): "
                      f"req/s {statistics.median(rr):.3f}, CPU µs/req {statistics.median(cpu):.3f}")
        cmp = [(t, "baseline-" + t[len("clonelb-"):]) for t in targets
               if t.startswith("clonelb-") and "baseline-" + t[len("clonelb-"):] in m]
        for extra in ("clonelb-log", "clonelb-audit"):
            if extra in m and "clonelb-rr" in m:
                cmp.append((extra, "clonelb-rr"))
        if cmp:
            print()
        for new, old in cmp:
            cpu = paired(cur, new, old, "us_per_req")
            rps = paired(cur, new, old, "rps")
            p99 = paired(cur, new, old, "p99_us")
            def mr(xs):
                return f"{statistics.median(xs):.2f}x" if xs else "n/a"
            spread = f"{min(cpu):.2f}-{max(cpu):.2f}" if cpu else "n/a"
            line = (f"{new} vs {old}: CPU µs/req {fmt(m[new]['us_per_req'], 2)} vs "
                    f"{fmt(m[old]['us_per_req'], 2)} ({mr(cpu)}), req/s {mr(rps)}")
            if h1:
                line += f", p99 {mr(p99)}"
            n = len(cpu)
            print(f"{line}  [{n} paired round{'' if n == 1 else 's'}, CPU ratio range {spread}]  ")
        print()
mrows = list(csv.DictReader(open(mem))) if os.path.exists(mem) else []
if mrows:
    print("### Memory per idle keep-alive client connection\n")
    print("| target | idle conns | RSS before | RSS with idle conns | KiB per conn |")
    print("|---|---:|---:|---:|---:|")
    for r in mrows:
        print(f"| {r['target']} | {r['idle_ok']} | {int(r['rss_before_kib']):,} KiB | "
              f"{int(r['rss_after_kib']):,} KiB | {r['kib_per_conn']} |")
    print()
if os.path.exists(soak):
    _, t, first, last = open(soak).read().strip().split(",")
    print(f"soak ({t}): RSS {int(first):,} KiB after warm-up, {int(last):,} KiB at the end "
          f"({int(last) - int(first):+,} KiB)\n")
EOF
echo "raw results: $RESULTS" >&2
