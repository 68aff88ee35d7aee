# shellcheck shell=bash disable=SC2154 # MiB, GiB, BASE, ...: set by scripts/bench, which sources this
# Sourced by scripts/bench: the "Remote volume (Garage)" table (issue 11, section "Targets").
# A single Garage node started here on free loopback ports, its directories on the same backing
# as the local rows, and a dedupfs volume in its bucket measured beside a local dedupfs volume
# in the same run:
#   write: DATA_BYTES of unique data (dd bs=1M conv=fsync) until `dedupfs sync` returns, local
#     volume vs Garage volume; the CPU time of the dedupfs daemon and of the garage server during
#     it (/proc/PID/stat utime + stime);
#   cold read: `dedupfs attach` into a fresh store directory (nothing downloaded), mount,
#     drop_caches, read: every byte comes from the bucket; vs the local volume's cold read;
#   cached read: the attached store mounted again, drop_caches, read: the range cache on the
#     local disk; vs the local volume's cold read (its packs on the same disk); and a read at
#     once on the same mount after each (page cache / daemon cache), for both;
#   second volume: another `init --remote --volume` under the same prefix storing the first
#     REMOTE2_BYTES of the same data: bytes it put in the bucket (an S3 listing before and after);
#   objects: the bucket's objects once the data set is stored, by kind.
# Like the Rust test harness (tests/common/garage.rs): sqlite metadata, replication factor 1,
# one node in zone dc1, one key with read, write and owner rights on one bucket.
# Uses from scripts/bench: BASE, WORK, SHM, DATA_BYTES, DEDUPFS_BIN, HELPERS, STEP_TIMEOUT, MiB,
# GiB, MOUNTS, DAEMONS, and its helpers (put, note, log, timed, drop_caches, init_store,
# running, cpu_ticks, wait_exit, forget_daemon, trash, empty_trash, now_ns, ns_secs).

GARAGE_PID=""     # the running server, stopped by garage_stop (also from the bench's cleanup)
GARAGE_DIR=""     # its config, metadata, data and log
GARAGE_CFG=""
GARAGE_BUCKET=dedupfs-bench
GARAGE_REGION=garage
GARAGE_PREFIX=bench # the volumes' prefix in the bucket: s3://BUCKET/PREFIX
GARAGE_START_TIMEOUT=60 # seconds for the node to answer, and again for the layout
# The Garage node's capacity in the layout: Garage needs one; with one node nothing checks it.
GARAGE_CAPACITY=1T

# garage_bin: the garage binary ($GARAGE_BIN, else garage on PATH, else /usr/local/bin/garage,
# where scripts/install-deps puts it), or nothing.
garage_bin() {
    if [ -n "${GARAGE_BIN:-}" ]; then
        [ -x "$GARAGE_BIN" ] && echo "$GARAGE_BIN"
        return 0
    fi
    command -v garage 2>/dev/null || { [ -x /usr/local/bin/garage ] && echo /usr/local/bin/garage; } || true
}

gcli() { NO_COLOR=1 timeout 60 "$GARAGE" -c "$GARAGE_CFG" "$@" </dev/null; }

# garage_fail WHAT: a note with the end of the server's log; returns 1
garage_fail() {
    note "remote table: $1; garage log: $(tail -c 400 "$GARAGE_DIR/garage.log" 2>/dev/null | tr '\n' ' ')"
    return 1
}

# garage_wait WHAT CMD..: polls CMD every 0.2 s until it succeeds, the server exits or
# GARAGE_START_TIMEOUT passes
garage_wait() {
    local what=$1 _
    shift
    for _ in $(seq 1 $((GARAGE_START_TIMEOUT * 5))); do
        "$@" && return 0
        running "$GARAGE_PID" || { garage_fail "garage exited while waiting for $what"; return 1; }
        sleep 0.2
    done
    garage_fail "no $what after $GARAGE_START_TIMEOUT s"
}

garage_answers() { gcli status >/dev/null 2>&1 && (exec 3<>"/dev/tcp/127.0.0.1/$GARAGE_S3_PORT") 2>/dev/null; }
garage_has_layout() {
    local st
    st=$(gcli status 2>/dev/null) || return 1
    [[ "$st" == *127.0.0.1:* && "$st" != *"NO ROLE ASSIGNED"* ]]
}

# garage_start DIR: a single node with its files in DIR, a key and the bucket; exports the
# AWS_* variables dedupfs (and s3ls.py) read, so that every dedupfs command of the bench talks
# to it. Returns 1 (with a note) if anything fails.
garage_start() {
    local rpc id key
    GARAGE_DIR=$1
    GARAGE_CFG="$GARAGE_DIR/garage.toml"
    mkdir -p "$GARAGE_DIR"
    # two ports free on 127.0.0.1 now (bound together, so distinct; released just before use)
    read -r GARAGE_S3_PORT rpc < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s:
    x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))') || { note "remote table: no free loopback ports"; return 1; }
    # Garage 2.5 keys. Its defaults, written out because the figures depend on them: no fsync of
    # data or metadata (a single node here; a cluster relies on replication), data blocks of
    # 1 MiB compressed with zstd level 1.
    cat >"$GARAGE_CFG" <<EOF
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "sqlite"
replication_factor = 1
metadata_fsync = false
data_fsync = false
block_size = 1048576
compression_level = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"

[s3_api]
api_bind_addr = "127.0.0.1:$GARAGE_S3_PORT"
s3_region = "$GARAGE_REGION"
EOF
    log "starting garage ($("$GARAGE" --version 2>/dev/null | head -1)) on 127.0.0.1:$GARAGE_S3_PORT, files in $GARAGE_DIR"
    # One log line per S3 request (the request counts of the table), warnings otherwise.
    RUST_LOG=garage=warn,garage_api_common::generic_server=info NO_COLOR=1 "$GARAGE" -c "$GARAGE_CFG" server </dev/null >"$GARAGE_DIR/garage.log" 2>&1 &
    GARAGE_PID=$!
    garage_wait "answer from the node" garage_answers || return 1
    id=$(gcli node id --quiet 2>"$WORK/step.err") || { garage_fail "garage node id failed: $(cat "$WORK/step.err")"; return 1; }
    id=${id%%@*}
    if ! gcli layout assign -z dc1 -c "$GARAGE_CAPACITY" "${id:0:16}" >/dev/null 2>"$WORK/step.err" ||
        ! gcli layout apply --version 1 >/dev/null 2>>"$WORK/step.err"; then
        garage_fail "garage layout assign/apply failed: $(tail -c 300 "$WORK/step.err")"
        return 1
    fi
    garage_wait "layout" garage_has_layout || return 1
    if ! key=$(gcli key create dedupfs-bench-key 2>"$WORK/step.err") ||
        ! gcli bucket create "$GARAGE_BUCKET" >/dev/null 2>>"$WORK/step.err" ||
        ! gcli bucket allow --read --write --owner "$GARAGE_BUCKET" --key dedupfs-bench-key >/dev/null 2>>"$WORK/step.err"; then
        garage_fail "garage key/bucket setup failed: $(tail -c 300 "$WORK/step.err")"
        return 1
    fi
    AWS_ACCESS_KEY_ID=$(awk '$1 == "Key" && $2 == "ID:" { print $3 }' <<<"$key")
    AWS_SECRET_ACCESS_KEY=$(awk '$1 == "Secret" && $2 == "key:" { print $3 }' <<<"$key")
    if [ -z "$AWS_ACCESS_KEY_ID" ] || [ -z "$AWS_SECRET_ACCESS_KEY" ]; then
        garage_fail "no key id or secret in the output of garage key create"
        return 1
    fi
    export AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
    export AWS_REGION=$GARAGE_REGION AWS_ENDPOINT_URL="http://127.0.0.1:$GARAGE_S3_PORT"
    # variables that would take precedence over, or be sent along with, the ones above
    unset AWS_ENDPOINT_URL_S3 AWS_SESSION_TOKEN AWS_DEFAULT_REGION
    put remote.garage_version "$("$GARAGE" --version 2>/dev/null | head -1)"
}

# garage_stop: stops the server started by garage_start (SIGTERM, then SIGKILL after 10 s).
# Called at the end of the table and from the bench's cleanup, after the FUSE daemons exited
# (they publish to it at unmount).
garage_stop() {
    local _
    [ -n "$GARAGE_PID" ] || return 0
    if running "$GARAGE_PID"; then
        kill -TERM "$GARAGE_PID" 2>/dev/null
        for _ in $(seq 1 50); do running "$GARAGE_PID" || break; sleep 0.2; done
        running "$GARAGE_PID" && kill -KILL "$GARAGE_PID" 2>/dev/null
    fi
    wait "$GARAGE_PID" 2>/dev/null
    GARAGE_PID=""
}

# s3_listing KEY: count and bytes of the objects under the volumes' prefix, as JSON, under KEY
s3_listing() {
    local j
    if j=$(timeout 120 python3 "$HELPERS/s3ls.py" "$GARAGE_BUCKET" "$GARAGE_PREFIX/" 2>"$WORK/step.err"); then
        put "$1" "$j"
    else
        put "$1" ERR
        note "remote table: listing the bucket failed: $(tail -c 300 "$WORK/step.err" | tr '\n' ' ')"
    fi
}

# rmount STORE MNT: mounts a store (--background) and records the daemon in DPID, MOUNTS and
# DAEMONS as fs_mount does; the daemon inherits the AWS_* variables.
rmount() {
    local out
    mkdir -p "$2"
    out=$("$DEDUPFS_BIN" mount "$1" "$2" --background 2>&1) || { note "remote table: dedupfs mount $1 failed: $out"; return 1; }
    DPID=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$out")
    [ -n "$DPID" ] || DPID=$(pgrep -nf "dedupfs mount $1 " || true)
    MOUNTS+=("$2")
    [ -n "$DPID" ] && DAEMONS+=("$DPID")
    return 0
}

# rumount MNT: unmounts and waits until the daemon exited (a remote volume publishes first)
rumount() {
    local t0
    mountpoint -q "$1" || { DPID=""; return 0; }
    t0=$(now_ns)
    umount "$1" || { note "remote table: umount $1 failed, lazy unmount"; umount -l "$1"; }
    if [ -n "$DPID" ]; then
        wait_exit "$DPID" 300 || { note "remote table: daemon $DPID did not exit within 300 s of umount"; return 1; }
        forget_daemon "$DPID"
    fi
    DPID=""
    log "remote table: unmounted $1 after $(ns_secs "$t0" "$(now_ns)") s"
}

# s3_requests: "PUT GET" requests for pack objects (PREFIX/packs/...) that garage has logged so
# far (0 0 without a server); the lease and the metadata generations are left out
s3_requests() {
    [ -n "$GARAGE_PID" ] || { echo "0 0"; return 0; }
    awk '/generic_server:/ && /\/packs\// { if (/\) PUT \//) p++; else if (/\) GET \//) g++ } END { print p + 0, g + 0 }' \
        "$GARAGE_DIR/garage.log" 2>/dev/null || echo "0 0"
}
# req_delta BEFORE AFTER: "PUT GET" of AFTER minus BEFORE
req_delta() { echo "$1 $2" | awk '{ print $3 - $1, $4 - $2 }'; }

# ticks_sum PID: utime + stime of PID in clock ticks, or nothing
ticks_sum() { cpu_ticks "$1" | awk 'NF == 2 { print $1 + $2 }'; }

# write_until_sync KEY MNT: DATA_BYTES of the data set written (dd conv=fsync), then `dedupfs
# sync MNT`; the time until dd returned under KEY.fsync, until sync returned under KEY; the CPU
# ticks of the daemon (DPID) and of garage over the whole under KEY.cpu ("daemon garage"), the
# S3 requests under KEY.req ("PUT GET").
write_until_sync() {
    local key=$1 m=$2 t0 t1 t2 d0 g0 d1 g1 q0
    drop_caches
    q0=$(s3_requests)
    d0=$(ticks_sum "$DPID") g0=$(ticks_sum "$GARAGE_PID")
    t0=$(now_ns)
    if ! timeout "$STEP_TIMEOUT" dd if="$SHM/data" of="$m/big" bs=1M conv=fsync status=none 2>"$WORK/step.err"; then
        put "$key" ERR
        note "remote table: $key: dd failed: $(tail -c 300 "$WORK/step.err" | tr '\n' ' ')"
        return 1
    fi
    t1=$(now_ns)
    if ! timeout "$STEP_TIMEOUT" "$DEDUPFS_BIN" sync "$m" >/dev/null 2>"$WORK/step.err"; then
        put "$key" ERR
        note "remote table: $key: dedupfs sync failed: $(tail -c 300 "$WORK/step.err" | tr '\n' ' ')"
        return 1
    fi
    t2=$(now_ns)
    d1=$(ticks_sum "$DPID") g1=$(ticks_sum "$GARAGE_PID")
    put "$key.fsync" "$(ns_secs "$t0" "$t1")"
    put "$key" "$(ns_secs "$t0" "$t2")"
    put "$key.cpu" "$(python3 -c "print(int('${d1:-0}') - int('${d0:-0}'), int('${g1:-0}') - int('${g0:-0}'))")"
    put "$key.req" "$(req_delta "$q0" "$(s3_requests)")"
}

# read_timed KEY MNT: a read of MNT/big (dd bs=1M) under KEY, with the CPU ticks of the daemon
# and of garage during it under KEY.cpu, the S3 requests under KEY.req
read_timed() {
    local key=$1 m=$2 d0 g0 d1 g1 q0
    q0=$(s3_requests)
    d0=$(ticks_sum "$DPID") g0=$(ticks_sum "$GARAGE_PID")
    timed "$key" dd if="$m/big" of=/dev/null bs=1M status=none >/dev/null || return 1
    d1=$(ticks_sum "$DPID") g1=$(ticks_sum "$GARAGE_PID")
    put "$key.cpu" "$(python3 -c "print(int('${d1:-0}') - int('${d0:-0}'), int('${g1:-0}') - int('${g0:-0}'))")"
    put "$key.req" "$(req_delta "$q0" "$(s3_requests)")"
}

# remote_stats KEY STORE: `dedupfs stats STORE --json` on one line under KEY (mounted: the
# daemon's published figures and remote/status.json)
remote_stats() {
    local j
    j=$("$DEDUPFS_BIN" stats "$2" --json 2>"$WORK/step.err" | tr -d '\n ')
    if [ -n "$j" ]; then put "$1" "$j"; else note "remote table: dedupfs stats $2 failed: $(tail -c 300 "$WORK/step.err")"; fi
}

# bench_remote: the whole table. Local volume first, then the Garage volume, attach, second volume.
bench_remote() {
    local lstore="$BASE/remote-local" lmnt="$BASE/remote-local-mnt"
    local wstore="$BASE/remote-writer" astore="$BASE/remote-attached" v2store="$BASE/remote-second"
    local rmnt="$BASE/remote-mnt" url="s3://$GARAGE_BUCKET/$GARAGE_PREFIX" cache_gib ok=1
    GARAGE=$(garage_bin)
    put remote.data_bytes "$DATA_BYTES"
    put remote.second_bytes "$REMOTE2_BYTES"
    if [ -z "$GARAGE" ] && [ -n "${GARAGE_BIN:-}" ]; then
        put remote.skipped "no garage binary: GARAGE_BIN=$GARAGE_BIN is not an executable file"
        log "remote table: skipped, GARAGE_BIN=$GARAGE_BIN is not an executable file"
        return 0
    elif [ -z "$GARAGE" ]; then
        put remote.skipped "no garage binary (GARAGE_BIN, PATH, /usr/local/bin/garage; scripts/install-deps installs it)"
        log "remote table: skipped, no garage binary"
        return 0
    fi
    # The local cache of the attached store must hold the whole data set as ranges (a quarter of
    # --cache-disk-gib goes to ranges, remote/packs.rs), so that the second read is all cached.
    cache_gib=$(python3 -c "import math; print(max(10, math.ceil(4 * 1.25 * $DATA_BYTES / $GiB)))")
    put remote.cache_gib "$cache_gib"
    put remote.clk_tck "$(getconf CLK_TCK)"

    # -- the local volume: write until sync, cold read (fresh mount), read again
    log "== remote table: local volume, $((DATA_BYTES / MiB)) MiB"
    init_store "$lstore" && rmount "$lstore" "$lmnt" || return 1
    write_until_sync remote.local.write "$lmnt" || ok=0
    rumount "$lmnt"
    drop_caches
    rmount "$lstore" "$lmnt" || return 1
    read_timed remote.local.read_cold "$lmnt"
    read_timed remote.local.read_again "$lmnt"
    rumount "$lmnt"
    trash "$lstore"
    empty_trash

    # -- the Garage volume
    garage_start "$BASE/garage" || { put remote.skipped "garage did not start (see notes)"; garage_stop; return 1; }
    log "== remote table: Garage volume at $url, $((DATA_BYTES / MiB)) MiB"
    if ! init_store "$wstore" --remote "$url" --volume first; then
        put remote.skipped "dedupfs init --remote failed (see notes)"
        garage_stop
        return 1
    fi
    rmount "$wstore" "$rmnt" || { garage_stop; return 1; }
    write_until_sync remote.garage.write "$rmnt" || ok=0
    remote_stats remote.garage.stats.synced "$wstore"
    local t0
    t0=$(now_ns)
    rumount "$rmnt"
    put remote.garage.umount "$(ns_secs "$t0" "$(now_ns)")"
    s3_listing remote.listing.first
    trash "$wstore"
    empty_trash

    # -- attach (nothing downloaded), cold read from the bucket; again; fresh mount: range cache
    log "remote table: attach, cold read from the bucket"
    if timed remote.attach "$DEDUPFS_BIN" attach "$astore" --remote "$url" --volume first \
        --cache-disk-gib "$cache_gib" >/dev/null; then
        put remote.attach.du "$(du -sB1 "$astore" | cut -f1)"
        drop_caches
        if rmount "$astore" "$rmnt"; then
            read_timed remote.garage.read_cold "$rmnt"
            read_timed remote.garage.read_again "$rmnt"
            remote_stats remote.garage.stats.read "$astore"
            rumount "$rmnt"
        fi
        log "remote table: read from the range cache (fresh mount, drop_caches)"
        drop_caches
        if rmount "$astore" "$rmnt"; then
            read_timed remote.garage.read_cached "$rmnt"
            if ! cmp -s "$SHM/data" "$rmnt/big"; then
                note "remote table: the file read on the attached store differs from the data written"
                put remote.verify ERR
            fi
            rumount "$rmnt"
        fi
    fi
    trash "$astore"
    empty_trash

    # -- a second volume under the same prefix storing (the first REMOTE2_BYTES of) the same data
    log "remote table: second volume, $((REMOTE2_BYTES / MiB)) MiB of the same data"
    s3_listing remote.listing.before_second
    if init_store "$v2store" --remote "$url" --volume second && rmount "$v2store" "$rmnt"; then
        t0=$(now_ns)
        if timeout "$STEP_TIMEOUT" dd if="$SHM/data" of="$rmnt/big" bs=1M count=$((REMOTE2_BYTES / MiB)) \
            conv=fsync status=none 2>"$WORK/step.err" &&
            timeout "$STEP_TIMEOUT" "$DEDUPFS_BIN" sync "$rmnt" >/dev/null 2>>"$WORK/step.err"; then
            put remote.second.write "$(ns_secs "$t0" "$(now_ns)")"
        else
            put remote.second.write ERR
            note "remote table: writing the second volume failed: $(tail -c 300 "$WORK/step.err" | tr '\n' ' ')"
        fi
        rumount "$rmnt"
        s3_listing remote.listing.after_second
    fi
    trash "$v2store"
    empty_trash
    put remote.garage_du "$(du -sB1 "$BASE/garage" | cut -f1)"
    garage_stop
    [ $ok = 1 ]
}
