# Shared by bench/vs-nginx.sh, bench/serve-cost.sh and bench/serve-switches.sh
# (sourced, not run): a work folder with the test files, nginx with the one
# configuration all three compare against, and `ringport serve` instances, all
# stopped on exit.
#
#   serve_setup NAME FILE...     # WORK=/tmp/NAME.XXXXXX with www/FILE of its size
#   start_server SPEC            # sets PORT[SPEC] and PID[SPEC]
#
# SPEC: nginx (2 workers, sendfile on, access log off), or
# BACKEND[:BINARY][@ARGS] for `ringport serve` (BACKEND uring or epoll; BINARY
# another build than $RINGPORT; ARGS more flags, split on spaces).

declare -A SERVE_SIZE=([1k.bin]=1024 [64k.bin]=65536 [16m.bin]=16777216)
declare -A PORT PID
PIDS=()

serve_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}

serve_setup() {
    local name=$1 f
    shift
    WORK=$(mktemp -d "/tmp/$name.XXXXXX")
    trap serve_cleanup EXIT
    mkdir -p "$WORK/www" "$WORK/nginx/logs" "$WORK/nginx/tmp"
    for f in "$@"; do head -c "${SERVE_SIZE[$f]}" /dev/urandom >"$WORK/www/$f"; done
    chmod -R a+rX "$WORK"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_server() {
    local s=$1
    if [ "$s" = nginx ]; then
        PORT[$s]=$(free_port)
        cat >"$WORK/nginx/nginx.conf" <<EOC
worker_processes 2;
user root;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
    access_log off; sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_timeout 75s; keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx/tmp/body; proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi; uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    server { listen 127.0.0.1:${PORT[$s]}; root $WORK/www; }
}
EOC
        nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
        PID[$s]=$!
        PIDS+=($!)
        return
    fi
    local spec=${s%%@*} args= backend bin=$RINGPORT out
    [[ $s == *@* ]] && args=${s#*@}
    backend=${spec%%:*}
    [[ $spec == *:* ]] && bin=${spec#*:}
    out="$WORK/ringport-${#PIDS[@]}.out"
    # shellcheck disable=SC2086 # ARGS are flags, split on spaces
    "$bin" serve "$WORK/www" --listen 127.0.0.1:0 --backend "$backend" $args >"$out" 2>&1 &
    PID[$s]=$!
    PIDS+=($!)
    for _ in $(seq 100); do grep -q http:// "$out" && break; sleep 0.1; done
    PORT[$s]=$(sed -nE 's#.*http://[^:]+:([0-9]+)/.*#\1#p' "$out")
    [ -n "${PORT[$s]}" ] || { echo "$s did not start:" >&2; cat "$out" >&2; exit 1; }
}
