#!/usr/bin/env bash
# Big pools (issue 14): how `clonelb check`, start-up and a reload grow with the number of
# clones in lb.toml, and whether reloading a 10,000-clone file every second disturbs the
# traffic to the clones that serve. Loopback only; every run is bounded; every process this
# script starts is stopped, by PID, when it exits.
#
#   apt-get install -y wrk nginx      # nginx optional (else examples/clone serves)
#   benches/big_pool.sh               # both parts: 5 runs per size, 3 rounds of 4 x 20 s
#   benches/big_pool.sh --quick       # 3 runs per size, 1 round of 4 x 5 s
#   benches/big_pool.sh --clonelb target/release/clonelb --no-traffic
#
# Options: --runs N (5), --sizes "100 1000 10000", --rounds N (3), --duration S (20),
# --conns N (64), --no-traffic (part 1 only), --no-sizes (part 2 only), --clonelb BIN (the
# build under test; default: build clonelb with cargo, in $CARGO_TARGET_DIR or target/).
#
# Part 1, per size N (runs interleaved over the sizes, medians reported), with N clones at
# 127.A.B.C:1 (port 1: nothing listens there, checked first) and no [health]:
#   check    wall time of `clonelb check lb.toml` (a process start, read, parse, validate);
#   ready    spawn of `clonelb run` until its admin `GET /ready` answers 200: the listeners
#            are bound and the first configuration is loaded (the readiness probe's view);
#   answer   spawn until the HTTP listener answers a request (502 here: every clone refuses
#            the connection; the proxy path, retries included, is up);
#   reload   `POST /reload` of the admin API after lb.toml gained one clone, until its 200
#            (it answers after the new table is published); the file is renamed into place
#            before the call and `[reload] watch = false`, so the watcher cannot race it.
#            It is the process's first reload, 0.2 s after it got ready;
#   -1       the next reload, the file losing that clone again;
#   RSS      resident memory once ready.
# The table adds the ratio 10000/1000 (linear growth: about 10; fixed costs such as the
# process start pull it lower) and the time per extra clone between those two sizes.
#
# Part 2, traffic while a 10,000-clone lb.toml is reloaded every second: three live clones
# (nginx with one worker, or examples/clone) and 9,997 dead ones (127.A.B.C:1). Dead clones
# must get no traffic, so [health] is on with start_unhealthy = true: they start down and
# never pass a check, and only the three live clones serve. The balancer starts with the
# three live clones alone (start_unhealthy = false there, so they are up at once); a first,
# unmeasured reload brings in the 9,997 (health settings change: checkers restart, the live
# clones keep their up state). The checks run every 30 s per clone (333 connects per second
# in all, refused at once); what that costs with no traffic is measured and reported.
# Six reloads with no traffic measure what one costs the balancer in CPU (median: B ms).
# Then rounds of four wrk -t1 -cC -dS --latency runs, in an order rotated each round:
#   three      the pool reloaded down to the 3 live clones (the reference);
#   steady     the 10,000-clone pool, no reload;
#   reloading  the same while another process rewrites lb.toml every second, alternating
#              between the 10,000-clone file and the same file plus one dead clone (so every
#              reload publishes a change), and calls `POST /reload`;
#   burn       the control for "reloading": no reload, but a process pinned to the
#              balancer's CPU burns B ms of CPU every second at the same moments; what any
#              work of that size beside a saturated worker does to the p99.
# Reported: medians over the rounds of req/s, p50, p99, max, errors, CPU per request and
# the CPU other processes of the machine used meanwhile (it is shared: runs where that is
# not ~0 are noise); per-round ratios (reloading / steady: what reloads cost; burn /
# steady: what B ms of CPU costs; steady / three: what the pool's size costs); the
# reloads' durations. The balancer is pinned to CPU $LB_CPU (default 1, one worker; its
# control and admin threads share that CPU), wrk, the backends and the reloading process
# to CPU $LOAD_CPU (default 0).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN=${BENCH_RUN:-/tmp/clonelb-big-pool}
RUNS=5
SIZES="100 1000 10000"
ROUNDS=3
DURATION=20
CONNS=64
DO_SIZES=1
DO_TRAFFIC=1
CLONELB=""
LB_CPU=${LB_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
BIG=10000   # clones in part 2's file

while [[ $# -gt 0 ]]; do
  case $1 in
    --runs) RUNS=$2; shift 2;;
    --sizes) SIZES=$2; shift 2;;
    --rounds) ROUNDS=$2; shift 2;;
    --duration) DURATION=$2; shift 2;;
    --conns) CONNS=$2; shift 2;;
    --no-traffic) DO_TRAFFIC=0; shift;;
    --no-sizes) DO_SIZES=0; shift;;
    --clonelb) CLONELB=$2; shift 2;;
    --quick) RUNS=3; ROUNDS=1; DURATION=5; shift;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0;;
    *) echo "big_pool.sh: unknown option $1" >&2; exit 2;;
  esac
done

die() { echo "big_pool.sh: $*" >&2; exit 1; }
command -v python3 >/dev/null || die "python3 is needed"
if [[ $DO_TRAFFIC = 1 ]]; then
  command -v wrk >/dev/null || die "wrk is needed for part 2: apt-get install -y wrk (or --no-traffic)"
  command -v curl >/dev/null || die "curl is needed for part 2"
  command -v taskset >/dev/null || die "taskset is needed (util-linux)"
fi

# Ports: none of benches/e2e.sh's (9001-9003, 18001-18435).
LB_PORT=19110; ADMIN_PORT=19111          # part 1
T_PORT=19120; T_ADMIN=19121              # part 2's balancer
BACKEND_PORTS="19101 19102 19103"        # part 2's live clones

# ------------------------------------------------------------------ processes we own
PIDS=()
cleanup() {
  # Part 1's balancers are started by its Python driver, which lists them here.
  [[ -f $RUN/pids ]] && while read -r p; do PIDS+=("$p"); done < "$RUN/pids"
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
}
trap cleanup EXIT INT TERM
started() { PIDS+=("$1"); }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {  # wait_port PORT: until something accepts on 127.0.0.1:PORT (max 10 s)
  for _ in $(seq 100); do port_busy "$1" && return 0; sleep 0.1; done
  die "nothing listens on 127.0.0.1:$1"
}
for port in $LB_PORT $ADMIN_PORT $T_PORT $T_ADMIN $BACKEND_PORTS; do
  port_busy "$port" && die "port $port is in use; stop what uses it first"
done
# The dead clones are 127.A.B.C:1: nothing may listen on port 1 (on any loopback address).
if command -v ss >/dev/null && ss -Hltn 'sport = :1' | grep -q .; then
  die "something listens on port 1; the dead clones would answer"
fi

rm -rf "$RUN"; mkdir -p "$RUN/tmp"
: > "$RUN/pids"

if [[ -z $CLONELB ]]; then
  echo "building clonelb (release)…" >&2
  (cd "$ROOT" && cargo build --release --quiet --bin clonelb --example clone) || die "cargo build failed"
  CLONELB="${CARGO_TARGET_DIR:-$ROOT/target}/release/clonelb"
  CLONE="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/clone"
else
  [[ -f $CLONELB && -x $CLONELB ]] || die "--clonelb $CLONELB: not an executable file"
  CLONELB="$(cd "$(dirname "$CLONELB")" && pwd)/$(basename "$CLONELB")"
  CLONE="$(dirname "$CLONELB")/examples/clone"
fi
echo "clonelb: $CLONELB ($(cd "$ROOT" && git describe --always --dirty 2>/dev/null))" >&2

# gen_config OUT CLONES LIVE [HEAD]: lb.toml with CLONES clones; the first LIVE are the live
# backends (127.0.0.1:19101...), the rest dead (127.A.B.C:1, unique); HEAD is the TOML before
# the [[backend]] list.
gen_config() {
  python3 - "$@" <<'EOF'
import sys
out, n, live, head = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lines = [head.rstrip("\n")]
for i in range(n):
    if i < live:
        addr, name = f"127.0.0.1:{19101 + i}", f"live-{i + 1}"
    else:
        j = i - live
        addr, name = f"127.{1 + j // 62500}.{(j // 250) % 250}.{1 + j % 250}:1", f"dead-{j + 1:05d}"
    lines += ["", "[[backend]]", f'address = "{addr}"', f'name = "{name}"']
with open(out + ".tmp", "w") as f:
    f.write("\n".join(lines) + "\n")
EOF
  mv "$1.tmp" "$1"
}

# ------------------------------------------------------------------ part 1: check, start, reload
if [[ $DO_SIZES = 1 ]]; then
  head="[listen]
http = \"127.0.0.1:$LB_PORT\"
[admin]
listen = \"127.0.0.1:$ADMIN_PORT\"
[reload]
watch = false"
  for n in $SIZES; do
    mkdir -p "$RUN/n$n"
    gen_config "$RUN/n$n/base.toml" "$n" 0 "$head"
    gen_config "$RUN/n$n/plus1.toml" "$((n + 1))" 0 "$head"
    "$CLONELB" check "$RUN/n$n/plus1.toml" >/dev/null || die "clonelb check rejects the generated $n-clone file"
  done
  echo "part 1: check, start, reload at $SIZES clones, $RUNS interleaved runs" >&2
  python3 - "$CLONELB" "$RUN" "$RUNS" "$LB_PORT" "$ADMIN_PORT" $SIZES <<'EOF' || die "part 1 failed"
import http.client, json, os, shutil, signal, socket, statistics, subprocess, sys, time
clonelb, run, runs, lb_port, admin_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sizes = [int(s) for s in sys.argv[6:]]
now = time.perf_counter

def request(port, method, path, timeout=30.0):
    """(status, body) of one request, or None when nothing answers yet."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request(method, path, headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, body
    except (ConnectionError, OSError, http.client.HTTPException):
        return None

def install(src, dst):
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    return 0

def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()

def cpu_ms(pid):
    """CPU time (ms) the process's threads have run so far (schedstat: nanoseconds)."""
    total = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass   # a thread that just ended
    return total / 1e6

# (n, run, kind, value): kind is a wall time in ms, "cpu:" + kind the CPU time (ms) it took
# (user + system, all threads), or "rss" in KiB.
rows = []
env = dict(os.environ, CLONELB_LOG="warn")
for r in range(1, runs + 1):
    for n in sizes:
        d = f"{run}/n{n}"
        conf = f"{d}/lb.toml"
        t0 = now()
        p = subprocess.Popen([clonelb, "check", f"{d}/base.toml"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        p.returncode = 0
        rows.append((n, r, "check", (now() - t0) * 1000))
        rows.append((n, r, "cpu:check", (ru.ru_utime + ru.ru_stime) * 1000))
        assert os.waitstatus_to_exitcode(status) == 0, f"check failed at {n}"

        install(f"{d}/base.toml", conf)
        log = open(f"{d}/run{r}.log", "w")
        t0 = now()
        p = subprocess.Popen([clonelb, "run", "--config", conf], stdout=subprocess.DEVNULL,
                             stderr=log, env=env)
        with open(f"{run}/pids", "a") as f:
            f.write(f"{p.pid}\n")
        try:
            answer = ready = None
            deadline = t0 + 60
            while now() < deadline and (answer is None or ready is None):
                if p.poll() is not None:
                    sys.exit(f"clonelb run exited ({p.returncode}) at {n} clones; see {d}/run{r}.log")
                if answer is None and request(lb_port, "GET", "/", 5) is not None:
                    answer = now() - t0
                if ready is None:
                    got = request(admin_port, "GET", "/ready", 5)
                    if got is not None and got[0] == 200:
                        ready = now() - t0
                        rows.append((n, r, "cpu:ready", cpu_ms(p.pid)))
                if answer is None or ready is None:
                    time.sleep(0.001)
            if answer is None or ready is None:
                sys.exit(f"clonelb run did not get ready within 60 s at {n} clones")
            rows.append((n, r, "ready", ready * 1000))
            rows.append((n, r, "answer", answer * 1000))
            rows.append((n, r, "rss", rss_kib(p.pid)))
            time.sleep(0.2)   # let start-up's stragglers (health sync, first ticks) settle
            for kind, src, want in (("reload", "plus1", "added"), ("reload-1", "base", "removed")):
                install(f"{d}/{src}.toml", conf)
                c0 = cpu_ms(p.pid)
                t0 = now()
                got = request(admin_port, "POST", "/reload")
                ms = (now() - t0) * 1000
                if got is None or got[0] != 200 or len(json.loads(got[1])[want]) != 1:
                    sys.exit(f"reload at {n} clones: {got}")
                rows.append((n, r, kind, ms))
                rows.append((n, r, "cpu:" + kind, cpu_ms(p.pid) - c0))
        finally:
            stop(p)
        line = "  ".join(f"{k} {v:.1f}" for (nn, rr, k, v) in rows
                         if nn == n and rr == r and k != "rss" and not k.startswith("cpu:"))
        print(f"  run {r} n={n:<6} {line} (ms)", file=sys.stderr)

with open(f"{run}/sizes.csv", "w") as f:
    f.write("n,run,kind,value\n")
    for row in rows:
        f.write("%d,%d,%s,%.3f\n" % row)

def med(n, kind):
    return statistics.median(v for (nn, _, k, v) in rows if nn == n and k == kind)
kinds = [("check", "check"), ("ready", "start → /ready"), ("answer", "start → first answer"),
         ("reload", "first reload, +1 clone"), ("reload-1", "next reload, −1 clone")]
def table(title, kinds, unit_note):
    print(f"\n### {title} (medians of {runs} runs{unit_note})\n")
    print("| clones | " + " | ".join(t for _, t in kinds) + " |")
    print("|---:|" + "---:|" * len(kinds))
    for n in sizes:
        print(f"| {n:,} | " + " | ".join(f"{med(n, k):.1f} ms" for k, _ in kinds) + " |")
    if 1000 in sizes and 10000 in sizes:
        print("| 10,000 / 1,000 | " + " | ".join(f"{med(10000, k) / med(1000, k):.1f} ×" for k, _ in kinds) + " |")
        print("| per clone, 1,000 → 10,000 | "
              + " | ".join(f"{(med(10000, k) - med(1000, k)) * 1000 / 9000:.2f} µs" for k, _ in kinds) + " |")
print("\n## Big pools: check, start, reload")
table("Wall time", kinds, "")
table("CPU time of clonelb", [("cpu:" + k, t) for k, t in kinds if k != "answer"],
      "; user + system, all threads")
print("\nRSS once ready: " + ", ".join(f"{med(n, 'rss') / 1024:.1f} MiB at {n:,}" for n in sizes) + "\n")
EOF
fi

# ------------------------------------------------------------------ part 2: traffic while reloading
if [[ $DO_TRAFFIC = 1 ]]; then
  if command -v nginx >/dev/null; then
    cat > "$RUN/backends.nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $RUN/backends.pid;
error_log $RUN/backends.error.log warn;
worker_rlimit_nofile 19000;
events { worker_connections 8192; multi_accept on; }
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path $RUN/tmp/b_body;
    proxy_temp_path       $RUN/tmp/b_proxy;
    fastcgi_temp_path     $RUN/tmp/b_fastcgi;
    uwsgi_temp_path       $RUN/tmp/b_uwsgi;
    scgi_temp_path        $RUN/tmp/b_scgi;
$(for p in $BACKEND_PORTS; do echo "    server { listen 127.0.0.1:$p backlog=4096; location / { return 200 \"hello from $p\n\"; } }"; done)
}
EOF
    taskset -c "$LOAD_CPU" nginx -e "$RUN/backends.startup.log" -p "$RUN/" -c "$RUN/backends.nginx.conf" &
    started $!; BACKEND_PIDS=$!
    BACKEND_DESC="nginx, 1 worker"
  else
    [[ -x $CLONE ]] || (cd "$ROOT" && cargo build --release --quiet --example clone) || die "cargo build failed"
    i=0
    for p in $BACKEND_PORTS; do
      i=$((i + 1))
      taskset -c "$LOAD_CPU" "$CLONE" --listen "127.0.0.1:$p" --name "live-$i" >/dev/null &
      started $!; BACKEND_PIDS="${BACKEND_PIDS:-} $!"
    done
    BACKEND_DESC="examples/clone"
  fi
  for p in $BACKEND_PORTS; do wait_port "$p"; done

  head="[listen]
http = \"127.0.0.1:$T_PORT\"
[admin]
listen = \"127.0.0.1:$T_ADMIN\"
[reload]
watch = false
[health]
path = \"/\"
interval = \"30s\"
timeout = \"1s\"
healthy_threshold = 1"
  T=$RUN/traffic; mkdir -p "$T"
  gen_config "$T/start.toml" 3 3 "$head
start_unhealthy = false"
  for f in three:3 a:$BIG b:$((BIG + 1)); do
    gen_config "$T/${f%%:*}.toml" "${f#*:}" 3 "$head
start_unhealthy = true"
  done
  cp "$T/start.toml" "$T/lb.toml"
  CLONELB_LOG=warn taskset -c "$LB_CPU" "$CLONELB" run --config "$T/lb.toml" 2>"$T/clonelb.log" &
  LB_PID=$!; started $LB_PID
  wait_port $T_PORT

  use_file() {  # use_file NAME: NAME.toml renamed into place and reloaded; prints ms
    cp "$T/$1.toml" "$T/lb.toml.tmp" && mv "$T/lb.toml.tmp" "$T/lb.toml"
    local t0; t0=$(date +%s%N)
    curl -sf -o /dev/null -X POST "http://127.0.0.1:$T_ADMIN/reload" || die "reload to $1.toml failed"
    echo $(( ($(date +%s%N) - t0) / 1000000 ))
  }
  use_file a > "$T/first.ms"   # not in $(...): a failure must stop the script
  echo "part 2: first reload, 3 -> $BIG clones (9,997 added, health settings changed): $(cat "$T/first.ms") ms" >&2
  CURRENT=a

  tree_ticks() {  # user+sys clock ticks of processes (all their threads) and their children
    local t=0 p c
    for p in "$@"; do
      t=$((t + $(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12+$13}' || echo 0)))
      for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do t=$((t + $(tree_ticks "$c"))); done
    done
    echo $t
  }
  # The machine is shared: each run also reports how much CPU *other* processes used
  # meanwhile (all CPUs' busy time minus the balancer's, the backends' and what this
  # script's finished children, wrk and the reloader, used), in % of one CPU.
  busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
  children_ticks() {  # FILE: the children's line of bash's `times`, in clock ticks
    awk -v hz="$(getconf CLK_TCK)" 'NR==2 { t=0; for (i=1;i<=2;i++) { split($i, a, /[ms]/); t+=a[1]*60+a[2] } printf "%d", t*hz }' "$1"
  }
  TICK_US=$((1000000 / $(getconf CLK_TCK)))
  to_us() {  # wrk latency ("812.00us", "1.20ms", "2.01s") -> microseconds
    awk -v v="$1" 'BEGIN{ n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else if (v ~ /s$/) print n*1000000; else print n }'
  }

  # What the checkers of 9,997 dead clones cost with nothing else going on.
  sleep 2
  c0=$(tree_ticks $LB_PID); sleep 10; c1=$(tree_ticks $LB_PID)
  IDLE_CPU=$(awk -v a="$c0" -v b="$c1" -v k="$TICK_US" 'BEGIN{ printf "%.1f", (b-a)*k/10e6*100 }')
  echo "  idle with $BIG clones (9,997 checked every 30 s, refused): ${IDLE_CPU} % of one CPU" >&2

  # reloader DURATION LOG: every second, the other big file renamed into place and
  # POST /reload; one line per reload: status, clones added + removed, ms.
  reloader() {
    exec taskset -c "$LOAD_CPU" python3 - "$T" "$T_ADMIN" "$1" "$2" <<'EOF'
import http.client, json, os, shutil, sys, time
t, port, duration, log = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
files = ["b.toml", "a.toml"]
i = 0
with open(log, "a") as out:
    while True:
        tick = start + i + 0.5   # first reload half a second into the run
        if tick > start + duration - 0.5:
            break
        time.sleep(max(0.0, tick - time.perf_counter()))
        shutil.copyfile(f"{t}/{files[i % 2]}", f"{t}/lb.toml.tmp")
        os.replace(f"{t}/lb.toml.tmp", f"{t}/lb.toml")
        t0 = time.perf_counter()
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/reload", headers={"Connection": "close"})
        r = c.getresponse()
        body = json.loads(r.read())
        ms = (time.perf_counter() - t0) * 1000
        changed = len(body.get("added", [])) + len(body.get("removed", []))
        out.write(f"{r.status},{changed},{ms:.3f}\n")
        i += 1
EOF
  }

  # burner DURATION MS: the control for "reloading": another process on the balancer's CPU
  # burns MS ms of CPU every second, at the same moments as the reloads.
  burner() {
    exec taskset -c "$LB_CPU" python3 - "$1" "$2" <<'EOF'
import sys, time
duration, ms = float(sys.argv[1]), float(sys.argv[2])
start = time.perf_counter()
i = 0
while start + i + 0.5 <= start + duration - 0.5:
    time.sleep(max(0.0, start + i + 0.5 - time.perf_counter()))
    c = time.process_time()
    while time.process_time() - c < ms / 1000:
        pass
    i += 1
EOF
  }

  # What one reload of the big file costs the balancer in CPU (all threads, schedstat ns),
  # with no traffic: the burner burns as much.
  lb_cpu_ns() { cat /proc/"$LB_PID"/task/*/schedstat 2>/dev/null | awk '{t+=$1} END{printf "%d", t}'; }
  costs=()
  for f in b a b a b a; do
    n0=$(lb_cpu_ns); use_file $f >/dev/null; n1=$(lb_cpu_ns)
    costs+=($(( (n1 - n0) / 1000000 )))
    sleep 0.3
  done
  BURN_MS=$(printf '%s\n' "${costs[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  echo "  one reload of the $BIG-clone file, no traffic: ${costs[*]} ms of CPU (median $BURN_MS)" >&2

  RESULTS=$T/results.csv
  echo "round,mode,rps,p50_us,p99_us,max_us,errors,us_per_req,others_pct" > "$RESULTS"
  : > "$T/reloads.csv"
  url="http://127.0.0.1:$T_PORT/"
  MODES=(three steady reloading burn)
  echo "part 2: $ROUNDS rounds of wrk -t1 -c$CONNS -d${DURATION}s: 3 clones alone, $BIG clones, $BIG clones reloaded every second, $BIG clones and $BURN_MS ms/s burned" >&2
  taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d3s "$url" >/dev/null 2>&1   # warm-up
  for pr in $(seq "$ROUNDS"); do
    for k in 0 1 2 3; do
      mode=${MODES[$(( (pr - 1 + k) % 4 ))]}   # the order rotates each round
      want=a; [[ $mode = three ]] && want=three
      if [[ $CURRENT != "$want" ]]; then
        use_file $want >/dev/null; CURRENT=$want; sleep 1
      fi
      rpid=""
      if [[ $mode = reloading ]]; then
        reloader "$DURATION" "$T/reloads.csv" & rpid=$!; started $rpid
      elif [[ $mode = burn ]]; then
        burner "$DURATION" "$BURN_MS" & rpid=$!; started $rpid
      fi
      c0=$(tree_ticks $LB_PID); b0=$(tree_ticks $BACKEND_PIDS); m0=$(busy_ticks); times > "$T/times0"
      out=$(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url" 2>&1)
      c1=$(tree_ticks $LB_PID); b1=$(tree_ticks $BACKEND_PIDS); m1=$(busy_ticks)
      [[ -n $rpid ]] && wait "$rpid"   # a reloader leaves a.toml or b.toml: both the big pool
      times > "$T/times1"   # in this shell: wrk and the reloader are reaped by now
      o0=$(children_ticks "$T/times0"); o1=$(children_ticks "$T/times1")
      others=$(awk -v m=$((m1 - m0 - (c1 - c0) - (b1 - b0) - (o1 - o0))) -v k="$TICK_US" -v d="$DURATION" \
        'BEGIN{ o = m*k/(d*1e6)*100; printf "%.0f", o < 0 ? 0 : o }')
      req=$(awk '/requests in/{print $1}' <<<"$out")
      rps=$(awk '/^Requests\/sec/{print $2}' <<<"$out")
      p50=$(to_us "$(awk '$1=="50%"{print $2}' <<<"$out")")
      p99=$(to_us "$(awk '$1=="99%"{print $2}' <<<"$out")")
      max=$(to_us "$(awk '$1=="Latency" && NF>=4 {print $4; exit}' <<<"$out")")
      errs=$(awk '/Non-2xx/{e+=$NF} /Socket errors/{gsub(/,/,""); e+=$4+$6+$8+$10} END{print e+0}' <<<"$out")
      us=$(awk -v a="$c0" -v b="$c1" -v n="${req:-0}" -v k="$TICK_US" 'BEGIN{ if (n>0) printf "%.2f", (b-a)*k/n; else print "nan" }')
      echo "$pr,$mode,$rps,$p50,$p99,$max,$errs,$us,$others" >> "$RESULTS"
      printf '  round %s %-9s %10s req/s  p50 %7sus  p99 %7sus  max %8sus  errors %s  %s us/req  others %s %%\n' \
        "$pr" "$mode" "$rps" "$p50" "$p99" "$max" "$errs" "$us" "$others" >&2
    done
  done

  python3 - "$RESULTS" "$T/reloads.csv" "$BACKEND_DESC" "$ROUNDS" "$DURATION" "$CONNS" "$IDLE_CPU" "$BIG" "$BURN_MS" <<'EOF'
import csv, statistics, sys
results, reloads, backends, rounds, duration, conns, idle, big, burn = sys.argv[1:10]
big = int(big)
rows = list(csv.DictReader(open(results)))
def med(mode, key):
    xs = [float(r[key]) for r in rows if r["mode"] == mode and r[key] not in ("", "nan")]
    return statistics.median(xs) if xs else float("nan")
def per_round(a, b, key):
    by = {}
    for r in rows:
        if r[key] not in ("", "nan"):
            by.setdefault(r["round"], {})[r["mode"]] = float(r[key])
    return [v[a] / v[b] for v in by.values() if a in v and b in v and v[b] > 0]
print(f"\n## Traffic while a {big:,}-clone lb.toml is reloaded every second\n")
print(f"3 live clones ({backends}); the {big - 3:,} others dead (127.A.B.C:1) and kept out of "
      f"rotation by [health] start_unhealthy. wrk -t1 -c{conns} -d{duration}s; medians of "
      f"{rounds} rounds (order rotated); balancer on one CPU, the rest on the other. "
      f"Idle CPU with the {big - 3:,} dead clones checked every 30 s: {idle} % of one CPU.\n")
print("| pool | req/s | p50 | p99 | max | errors | CPU µs/req | others' CPU |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
names = {"three": "3 clones alone", "steady": f"{big:,} clones",
         "reloading": f"{big:,} clones, reloaded every second",
         "burn": f"{big:,} clones, {burn} ms of CPU/s burned beside"}
for mode in ("three", "steady", "reloading", "burn"):
    print(f"| {names[mode]} | {med(mode, 'rps'):,.0f} | {med(mode, 'p50_us'):,.0f} µs | "
          f"{med(mode, 'p99_us'):,.0f} µs | {med(mode, 'max_us'):,.0f} µs | "
          f"{med(mode, 'errors'):,.0f} | {med(mode, 'us_per_req'):.2f} | {med(mode, 'others_pct'):.0f} % |")
print()
for a, b in (("reloading", "steady"), ("burn", "steady"), ("steady", "three")):
    for key, label in (("p99_us", "p99"), ("rps", "req/s"), ("us_per_req", "CPU µs/req")):
        xs = per_round(a, b, key)
        if xs:
            print(f"{names[a]} / {names[b]}, {label}: median {statistics.median(xs):.2f} "
                  f"(per round: {', '.join(f'{x:.2f}' for x in xs)})  ")
rl = [l.strip().split(",") for l in open(reloads) if l.strip()]
ok = [float(ms) for status, changed, ms in rl if status == "200" and changed == "1"]
if rl:
    print(f"\nreloads during the runs: {len(rl)} ({len(rl) - len(ok)} not 200 or not one clone "
          f"changed)" + (f", median {statistics.median(ok):.1f} ms, max {max(ok):.1f} ms" if ok else "")
          + "\n")
EOF
fi
echo "raw results under $RUN" >&2
