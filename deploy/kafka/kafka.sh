#!/usr/bin/env bash
# Local Apache Kafka (KRaft, one combined broker+controller on 127.0.0.1) without Docker.
#
#   deploy/kafka/kafka.sh up       fetch jars (first use), format storage (first use), start, wait until ready
#   deploy/kafka/kafka.sh down     stop by PID (fine when already stopped)
#   deploy/kafka/kafka.sh status   exit 0 when the broker answers
#   deploy/kafka/kafka.sh logs     tail the broker log
#   deploy/kafka/kafka.sh reset    stop and delete the Kafka data and the worker's local table state
#                                  (it was built from that data); secrets kept
#   deploy/kafka/kafka.sh compose-secrets
#                                  the secrets and broker config docker-compose.yml mounts (no
#                                  Java or Docker needed; idempotent; see docs/security.md)
#   deploy/kafka/kafka.sh cluster up|down|status|reset|logs N|kill N|stop N|start N
#                                  a 3-broker KRaft cluster on loopback (docs/operations.md,
#                                  "Cluster"): every node broker+controller, replication 3,
#                                  min.insync.replicas 2, the same security as the single broker;
#                                  kill N is kill -9 of node N (chaos tests), start N brings it back
#
# Environment (defaults in brackets):
#   STIXBUS_HOME        state folder for data, logs, pid            [<repo>/.stixbus]
#   KAFKA_PORT          client listener port                        [9092]
#   KAFKA_CONTROLLER_PORT controller listener port                  [9093]
#   KAFKA_HEAP          JVM heap                                    [-Xms256m -Xmx1g]
#   KAFKA_START_TIMEOUT seconds to wait for readiness               [90]
#   STIXBUS_KAFKA_SECURITY  sasl_ssl | sasl_plaintext | plaintext   [sasl_ssl]
# Cluster mode only:
#   KAFKA_CLUSTER_NODES     number of nodes (replication min(3, N))  [3]
#   KAFKA_CLUSTER_PORTS     client ports, comma-separated            [KAFKA_PORT, +2, +4, ...]
#   KAFKA_CLUSTER_CONTROLLER_PORTS  controller ports                 [KAFKA_PORT+1, +3, +5, ...]
#   KAFKA_CLUSTER_HEAP      JVM heap of each node                    [-Xms256m -Xmx512m]
#
# Security (docs/security.md).  sasl_ssl (the default): the client listener speaks SASL_SSL with
# SCRAM-SHA-512; the controller listener speaks SASL_PLAINTEXT with PLAIN (SCRAM cannot work
# there: the controller must authenticate before it has read the SCRAM credentials); the KRaft
# StandardAuthorizer denies everything no ACL allows; User:admin is the only super user.
# First use generates, under $STIXBUS_HOME/secrets (mode 700, git-ignored):
#   ca.pem/ca.key            a local CA (openssl, RSA 3072, 825 days)
#   broker.pem/broker.key    the broker certificate (SAN 127.0.0.1, localhost, kafka), signed by the CA
#   broker.p12               PKCS12 keystore for the broker; password in broker.secrets
#   broker.secrets           admin and keystore passwords (sourced by this script)
#   credentials.json         SCRAM passwords by principal ({"users": {...}}); this script writes
#                            admin's, `stixbus security apply` adds the worker, operator and orgs
#   client.env               STIXBUS_* connection settings the CLI and worker read
#   compose-server.properties, compose-admin.properties   (compose-secrets only) the broker's and
#                            the admin CLI's config with the paths and names inside the containers
#   compose-format.args      (compose-secrets only) the broker container's StorageTool arguments
#                            (java @file: the admin SCRAM credential stays off every command line)
#   taxii.pem/taxii.key, sinks.pem/sinks.key   (compose-secrets only) the TAXII and sink-list
#                            servers' certificates (SAN the service name, localhost, 127.0.0.1)
# and formats the storage with the admin SCRAM user (`--add-scram`).  sasl_plaintext is the same
# without TLS.  plaintext (no authentication, no ACLs) is an explicit opt-in for quick demos.
#
# Host hygiene (docs/security.md, "What the broker does not protect"): everything runs under
# umask 077 and `up` tightens an existing $STIXBUS_HOME (folders 0700, files 0600); no password
# is ever an argument of a process (the admin SCRAM credential reaches the StorageTool in a
# 0600 java @argument file, openssl reads the keystore password on stdin); the JVMs start with
# `env -i` plus PATH/HOME/LANG/JAVA_HOME, so the caller's STIXBUS_* secrets never reach them.
set -euo pipefail
# Every folder this script (and the broker it starts) creates is 0700, every file 0600: the
# data segments, logs and secrets hold TLP:RED content and passwords (docs/security.md, "Files").
umask 077

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
home="${STIXBUS_HOME:-$repo/.stixbus}"
kdir="$home/kafka"
port="${KAFKA_PORT:-9092}"
cport="${KAFKA_CONTROLLER_PORT:-9093}"
heap="${KAFKA_HEAP:--Xms256m -Xmx1g}"
timeout="${KAFKA_START_TIMEOUT:-90}"
lib="$here/lib"
pidfile="$kdir/kafka.pid"
logdir="$kdir/logs"
props="$kdir/server.properties"
secdir="$home/secrets"
mode="${STIXBUS_KAFKA_SECURITY:-sasl_ssl}"
modefile="$kdir/security.mode"
case "$mode" in
  sasl_ssl|sasl_plaintext|plaintext) ;;
  *) echo "kafka.sh: STIXBUS_KAFKA_SECURITY=$mode is not a mode: use sasl_ssl (default), sasl_plaintext or plaintext" >&2; exit 2 ;;
esac

die() { echo "kafka.sh: $*" >&2; exit 1; }

need_tools() {
  command -v java >/dev/null 2>&1 || die "java not found: install a JDK 17+ (Debian: apt-get install openjdk-17-jre-headless)"
}

fetch_jars() {
  if [ -f "$lib/.complete" ]; then return; fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found: install Maven to fetch the Kafka jars (Debian: apt-get install maven)"
  echo "kafka.sh: fetching Apache Kafka jars from Maven Central (first use)..."
  rm -rf "$lib"
  if ! mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies >"$home/mvn.log" 2>&1; then
    tail -n 30 "$home/mvn.log" >&2
    die "Maven could not fetch the Kafka jars (full log: $home/mvn.log)"
  fi
  touch "$lib/.complete"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

rand_secret() { openssl rand -hex 24; }

make_passwords() {
  # broker.secrets (admin and keystore passwords) and credentials.json (admin's); kept forever.
  mkdir -p "$secdir"; chmod 700 "$secdir"
  umask 077
  if [ ! -f "$secdir/broker.secrets" ]; then
    printf 'ADMIN_PASSWORD=%s\nKEYSTORE_PASSWORD=%s\n' "$(rand_secret)" "$(rand_secret)" >"$secdir/broker.secrets"
  fi
  # shellcheck disable=SC1091
  . "$secdir/broker.secrets"
  if [ ! -f "$secdir/credentials.json" ]; then
    printf '{"users": {"admin": "%s"}}\n' "$ADMIN_PASSWORD" >"$secdir/credentials.json"
  fi
}

make_ca() {
  echo "kafka.sh: generating a local CA in $secdir"
  umask 077
  openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days 825 -subj "/CN=stixbus local CA" \
    -keyout "$secdir/ca.key" -out "$secdir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    >/dev/null 2>&1 || die "openssl could not create the CA in $secdir"
}

make_broker_cert() {
  # Valid for the local stack (127.0.0.1, localhost) and for docker-compose (host name kafka).
  echo "kafka.sh: generating the broker certificate in $secdir"
  umask 077
  openssl req -newkey rsa:3072 -sha256 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$secdir/broker.key" -out "$secdir/broker.csr" >/dev/null 2>&1 \
    || die "openssl could not create the broker key in $secdir"
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kafka\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' >"$secdir/broker.ext"
  openssl x509 -req -sha256 -days 825 -in "$secdir/broker.csr" -CA "$secdir/ca.pem" \
    -CAkey "$secdir/ca.key" -CAcreateserial -extfile "$secdir/broker.ext" \
    -out "$secdir/broker.pem" >/dev/null 2>&1 || die "openssl could not sign the broker certificate"
  openssl pkcs12 -export -in "$secdir/broker.pem" -inkey "$secdir/broker.key" \
    -certfile "$secdir/ca.pem" -name broker -out "$secdir/broker.p12" \
    -passout stdin <<<"$KEYSTORE_PASSWORD" || die "openssl could not write the broker keystore"
  rm -f "$secdir/broker.csr" "$secdir/broker.ext"
}

make_server_cert() {
  # $1 name (taxii, sinks): $1.pem/$1.key, a TLS server certificate signed by the local CA for
  # the compose service of that name, localhost and 127.0.0.1 (its port published on the
  # Docker host).  Kept while it still verifies against ca.pem and names the service.
  local name="$1"
  if [ -f "$secdir/$name.key" ] && openssl verify -CAfile "$secdir/ca.pem" "$secdir/$name.pem" >/dev/null 2>&1 \
    && openssl x509 -in "$secdir/$name.pem" -noout -text 2>/dev/null | grep -Eq "DNS:$name(,|\$)"; then
    return 0
  fi
  echo "kafka.sh: generating the $name server certificate in $secdir"
  umask 077
  openssl req -newkey rsa:3072 -sha256 -nodes -subj "/CN=stixbus $name" \
    -keyout "$secdir/$name.key" -out "$secdir/$name.csr" >/dev/null 2>&1 \
    || die "openssl could not create the $name key in $secdir"
  printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$name" >"$secdir/$name.ext"
  openssl x509 -req -sha256 -days 825 -in "$secdir/$name.csr" -CA "$secdir/ca.pem" \
    -CAkey "$secdir/ca.key" -CAcreateserial -extfile "$secdir/$name.ext" \
    -out "$secdir/$name.pem" >/dev/null 2>&1 || die "openssl could not sign the $name certificate"
  rm -f "$secdir/$name.csr" "$secdir/$name.ext"
  chmod 600 "$secdir/$name.key" "$secdir/$name.pem"
}

make_secrets() {
  # Passwords and (for sasl_ssl) the CA and broker certificate; kept across restarts.
  command -v openssl >/dev/null 2>&1 || die "openssl not found: install it (Debian: apt-get install openssl)"
  make_passwords
  if [ "$mode" = sasl_ssl ] && [ ! -f "$secdir/broker.p12" ]; then
    if [ ! -f "$secdir/ca.pem" ] || [ ! -f "$secdir/ca.key" ]; then make_ca; fi
    make_broker_cert
  fi
}

write_client_env() {
  # What clients on this machine need to reach this broker (read by stixbus.settings).
  local protocol=PLAINTEXT
  case "$mode" in sasl_ssl) protocol=SASL_SSL ;; sasl_plaintext) protocol=SASL_PLAINTEXT ;; esac
  mkdir -p "$secdir"; chmod 700 "$secdir"
  {
    echo "# Generated by deploy/kafka/kafka.sh ($mode); real STIXBUS_* env vars override these."
    echo "STIXBUS_SECURITY_PROTOCOL=$protocol"
    if [ "$mode" != plaintext ]; then
      echo "STIXBUS_SASL_MECHANISM=SCRAM-SHA-512"
      echo "STIXBUS_CREDENTIALS_FILE=$secdir/credentials.json"
    fi
    if [ "$mode" = sasl_ssl ]; then echo "STIXBUS_SSL_CAFILE=$secdir/ca.pem"; fi
    if [ -n "${client_extra:-}" ]; then printf '%s\n' "$client_extra"; fi
  } >"$secdir/client.env"
}

server_props() {
  # Print a server.properties for security mode $1.  The rest describes the broker as it sees
  # itself: $2 secrets folder, $3 data folder, $4 controller host:port, $5 client listener bind
  # host:port, $6 its advertised host:port, and optionally $7/$8 the same for a second client
  # listener HOST (docker-compose: the port published on the Docker host).
  local smode="$1" sdir="$2" data="$3" controller="$4" bind="$5" adv="$6" hbind="${7:-}" hadv="${8:-}"
  local client_protocol=PLAINTEXT
  case "$smode" in sasl_ssl) client_protocol=SASL_SSL ;; sasl_plaintext) client_protocol=SASL_PLAINTEXT ;; esac
  local generated="# Generated by deploy/kafka/kafka.sh; edit the script, not this file."
  if [ "$smode" = plaintext ]; then
    cat <<PROPS
$generated
# Security mode: plaintext (no authentication, no ACLs) - quick local demos only.
process.roles=broker,controller
node.id=${node_id:-1}
controller.quorum.voters=${voters:-1@$controller}
listeners=PLAINTEXT://$bind,CONTROLLER://$controller
advertised.listeners=PLAINTEXT://$adv
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
PROPS
  else
    local listeners="CLIENT://$bind" advertised="CLIENT://$adv" map="CLIENT:$client_protocol"
    if [ -n "$hbind" ]; then
      listeners="$listeners,HOST://$hbind"; advertised="$advertised,HOST://$hadv"; map="$map,HOST:$client_protocol"
    fi
    cat <<PROPS
$generated
# Security mode: $smode (SCRAM-SHA-512 clients, PLAIN controller, StandardAuthorizer).
process.roles=broker,controller
node.id=${node_id:-1}
controller.quorum.voters=${voters:-1@$controller}
listeners=$listeners,CONTROLLER://$controller
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=CLIENT
listener.security.protocol.map=$map,CONTROLLER:SASL_PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.client.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.controller.sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
sasl.mechanism.controller.protocol=PLAIN
listener.name.client.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN_PASSWORD";
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$ADMIN_PASSWORD" user_admin="$ADMIN_PASSWORD";
PROPS
    if [ -n "$hbind" ]; then
      cat <<PROPS
listener.name.host.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.host.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
PROPS
    fi
    cat <<PROPS
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin
PROPS
    if [ "$smode" = sasl_ssl ]; then
      cat <<PROPS
ssl.keystore.type=PKCS12
ssl.keystore.location=$sdir/broker.p12
ssl.keystore.password=$KEYSTORE_PASSWORD
ssl.key.password=$KEYSTORE_PASSWORD
ssl.truststore.type=PEM
ssl.truststore.location=$sdir/ca.pem
ssl.client.auth=none
ssl.endpoint.identification.algorithm=https
PROPS
    fi
  fi
  local rf="${replication:-1}" isr="${min_isr:-1}"
  cat <<PROPS
log.dirs=$data
num.partitions=1
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
share.coordinator.state.topic.replication.factor=$rf
share.coordinator.state.topic.min.isr=$isr
PROPS
  if [ "$rf" != 1 ]; then
    cat <<PROPS
default.replication.factor=$rf
min.insync.replicas=$isr
num.recovery.threads.per.data.dir=4
PROPS
  fi
  cat <<PROPS
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=168
# Each topic's retention is set by stixbus (docs/operations.md, "Retention"); check it and
# compact often, so short retention settings (the tests') act within seconds.
log.retention.check.interval.ms=5000
log.cleaner.backoff.ms=2000
PROPS
}

write_props() {
  ( umask 077
    server_props "$mode" "$secdir" "$kdir/data" "127.0.0.1:$cport" "127.0.0.1:$port" "127.0.0.1:$port" >"$props" )
  chmod 600 "$props"
}

# docker-compose.yml mounts $STIXBUS_HOME/secrets at this path in every container.
compose_secdir=/etc/stixbus/secrets
compose_data=/var/lib/kafka/data/stixbus-sasl-ssl

compose_secrets() {
  # What docker-compose.yml needs, generated on the host (openssl only; no Java, no Docker):
  # the same CA, keystore, passwords and credentials.json as `up`, plus the broker and admin
  # client configs as seen from inside the containers.  Idempotent: existing secrets are kept.
  mode=sasl_ssl
  make_secrets
  if ! openssl x509 -in "$secdir/broker.pem" -noout -text 2>/dev/null | grep -Eq 'DNS:kafka(,|$)'; then
    # A certificate from before compose support: re-issue it (same CA) with the name kafka.
    make_broker_cert
  fi
  # The egress services' HTTPS/TLS: TAXII (port 6444) and the sink lists (6445).
  make_server_cert taxii
  make_server_cert sinks
  ( umask 077
    # Internal listener kafka:9092 (other containers); HOST listener on container port 19092,
    # published as 127.0.0.1:9092 and advertised so (clients on the Docker host).
    server_props sasl_ssl "$compose_secdir" "$compose_data" kafka:9093 \
      0.0.0.0:9092 kafka:9092 0.0.0.0:19092 127.0.0.1:9092 >"$secdir/compose-server.properties"
    cat >"$secdir/compose-admin.properties" <<PROPS
# Generated by deploy/kafka/kafka.sh compose-secrets: Kafka CLI tools as admin inside the kafka
# container (--command-config $compose_secdir/compose-admin.properties).
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$ADMIN_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$compose_secdir/ca.pem
PROPS
  )
  # The broker container formats its storage from this java @argument file (main class and
  # all), so the admin password is never an argument `ps` shows.  A fresh random cluster id
  # each time (ignored once the data volume is formatted); openssl makes it, no Java needed.
  local cid
  cid="$(openssl rand 16 | openssl base64 -A | tr '+/' '-_' | tr -d '=')"
  ( umask 077
    printf '%s\n' kafka.tools.StorageTool format --ignore-formatted \
      -c "$compose_secdir/compose-server.properties" -t "$cid" \
      --add-scram "\"SCRAM-SHA-512=[name=admin,password=$ADMIN_PASSWORD]\"" >"$secdir/compose-format.args" )
  chmod 600 "$secdir/compose-server.properties" "$secdir/compose-admin.properties" "$secdir/compose-format.args"
  write_client_env
  echo "kafka.sh: docker-compose secrets ready in $secdir (mounted at $compose_secdir); next: STIXBUS_UID=\$(id -u) STIXBUS_GID=\$(id -g) docker compose up -d --build"
}

make_private() {
  # State made before the umask (or by another tool): folders 0700, files 0600.
  [ -d "$1" ] || return 0
  find "$1" -type d ! -perm 700 -exec chmod 700 {} + 2>/dev/null || true
  find "$1" -type f ! -perm 600 -exec chmod 600 {} + 2>/dev/null || true
}

# The JVMs get an empty environment plus what Java needs: nothing of the caller's (the CLI's
# STIXBUS_SASL_PASSWORD, for one) reaches the broker (docs/security.md, "Secrets").
# An array, not a function: `"${clean_env[@]}" java ... &` execs, so $! is the JVM's pid.
clean_env=(env -i "PATH=$PATH" "HOME=${HOME:-/}" "LANG=${LANG:-C.UTF-8}")
if [ -n "${JAVA_HOME:-}" ]; then clean_env+=("JAVA_HOME=$JAVA_HOME"); fi

new_cluster_id() {
  "${clean_env[@]}" java -cp "$lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1
}

format_storage() {
  # The admin SCRAM credential goes to the StorageTool in a java @argument file (mode 0600,
  # deleted right after), never on a command line `ps` shows.
  local cluster_id="${1:-}" argfile="$kdir/format.args"
  if [ -z "$cluster_id" ]; then cluster_id="$(new_cluster_id)"; fi
  rm -f "$argfile"
  {
    printf '%s\n' kafka.tools.StorageTool format -t "$cluster_id" -c "$props"
    if [ "$mode" != plaintext ]; then
      printf '%s\n' --add-scram "\"SCRAM-SHA-512=[name=admin,password=$ADMIN_PASSWORD]\""
    fi
  } >"$argfile"
  chmod 600 "$argfile"
  local rc=0
  "${clean_env[@]}" java -cp "$lib/*" -Dlog4j2.configurationFile="$here/log4j2-quiet.properties" \
    "@$argfile" >"$logdir/format.log" 2>&1 || rc=$?
  rm -f "$argfile"
  [ "$rc" = 0 ] || { cat "$logdir/format.log" >&2; die "formatting KRaft storage failed"; }
}

ready() {
  # Ready means the broker finished starting (unfenced, listeners enabled), not just an open port.
  port_open "$port" && [ -f "$logdir/stdout.log" ] && grep -q "Kafka Server started" "$logdir/stdout.log" "$logdir/server.log" 2>/dev/null
}

up() {
  need_tools
  mkdir -p "$kdir" "$logdir"
  make_private "$home"
  fetch_jars
  if running; then
    echo "kafka.sh: broker already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
    return 0
  fi
  if port_open "$port"; then
    die "port $port is taken by a process this script did not start (another broker?); stop it or set KAFKA_PORT"
  fi
  if [ -f "$kdir/data/meta.properties" ]; then
    local formatted; formatted="$(cat "$modefile" 2>/dev/null || echo plaintext)"
    if [ "$formatted" != "$mode" ]; then
      die "the Kafka data in $kdir/data was formatted for security mode '$formatted', not '$mode': set STIXBUS_KAFKA_SECURITY=$formatted, or wipe the local data with 'deploy/kafka/kafka.sh reset' (or 'make down' then delete $kdir/data)"
    fi
  fi
  if [ "$mode" = plaintext ]; then
    echo "kafka.sh: WARNING: security mode 'plaintext': no TLS, no authentication, no ACLs - any local process can read and write every topic. Use it only for quick local demos (unset STIXBUS_KAFKA_SECURITY for the secure default)." >&2
  else
    make_secrets
  fi
  write_props
  write_client_env
  if [ ! -f "$kdir/data/meta.properties" ]; then
    format_storage
    echo "$mode" >"$modefile"
  fi
  echo "kafka.sh: starting Kafka $(kafka_version) on 127.0.0.1:$port, security $mode (logs: $logdir/server.log)"
  start_jvm
  wait_started
}

kafka_version() { ls "$lib" | sed -n 's/^kafka_2.13-\(.*\)\.jar$/\1/p'; }

start_jvm() {
  # One JVM for the node the globals describe ($props, $logdir, $pidfile), in the background.
  # A fresh stdout.log per start, so ready() only sees this start's messages.
  : >"$logdir/stdout.log"; mv -f "$logdir/server.log" "$logdir/server.log.prev" 2>/dev/null || true
  # shellcheck disable=SC2086
  "${clean_env[@]}" nohup java $heap -XX:+UseG1GC -Djava.awt.headless=true \
    -Dkafka.logs.dir="$logdir" -Dlog4j2.configurationFile="$here/log4j2.properties" \
    -cp "$lib/*" kafka.Kafka "$props" >"$logdir/stdout.log" 2>&1 &
  echo $! >"$pidfile"
}

wait_started() {
  local waited=0
  until ready; do
    if ! running; then
      echo "kafka.sh: broker ${node_id:-1} exited during start; last log lines:" >&2
      tail -n 40 "$logdir/server.log" "$logdir/stdout.log" >&2 2>/dev/null || true
      rm -f "$pidfile"
      exit 1
    fi
    if [ "$waited" -ge "$timeout" ]; then
      echo "kafka.sh: broker ${node_id:-1} not ready after ${timeout}s; last log lines:" >&2
      tail -n 40 "$logdir/server.log" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 1; waited=$((waited + 1))
  done
  echo "kafka.sh: broker ${node_id:-1} ready after ${waited}s"
}

# The worker's RocksDB tables under $home/worker are built from the changelog topics this
# deletes: kept, a restarted worker would stop with Faust's ConsistencyError (docs/runbook.md).
reset() {
  local wpid
  wpid="$(cat "$home/worker.pid" 2>/dev/null || true)"
  if [ -n "$wpid" ] && kill -0 "$wpid" 2>/dev/null; then
    die "a worker is running (pid $wpid): stop it first with 'stixbus down' (or 'make down'), then reset"
  fi
  down
  rm -rf "$kdir/data" "$modefile" "$home/worker"
  echo "kafka.sh: Kafka data and worker state ($home/worker) removed (secrets in $secdir kept)"
}

down() {
  if ! running; then
    echo "kafka.sh: broker ${node_id:-1} not running"
    rm -f "$pidfile"
    return 0
  fi
  local pid; pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "kafka.sh: broker ${node_id:-1} stopped"
}

# -- cluster mode --------------------------------------------------------------------------------
# N nodes on loopback, each broker+controller (a static 3-voter KRaft quorum survives one lost
# node), under $STIXBUS_HOME/kafka-cluster/node<i>.  Same secrets, CA, certificate (SAN
# 127.0.0.1) and admin credential as the single broker; topics default to replication
# min(3, N) and min.insync.replicas 2, so a write with acks=all survives the loss of one broker.
chome="$home/kafka-cluster"
cnodes="${KAFKA_CLUSTER_NODES:-3}"
case "$cnodes" in ''|*[!0-9]*) die "KAFKA_CLUSTER_NODES=$cnodes is not a number (3 is the usual)" ;; esac

cluster_list() {
  # $1 explicit comma list (or empty), $2 first port of the default sequence: print N ports.
  local explicit="$1" first="$2" i
  if [ -n "$explicit" ]; then
    tr ',' '\n' <<<"$explicit"
  else
    for i in $(seq 1 "$cnodes"); do echo $((first + 2 * (i - 1))); done
  fi
}

cluster_init() {
  [ "$cnodes" -ge 1 ] || die "KAFKA_CLUSTER_NODES must be at least 1"
  mapfile -t cports < <(cluster_list "${KAFKA_CLUSTER_PORTS:-}" "$port")
  mapfile -t ccports < <(cluster_list "${KAFKA_CLUSTER_CONTROLLER_PORTS:-}" $((port + 1)))
  [ "${#cports[@]}" = "$cnodes" ] || die "KAFKA_CLUSTER_PORTS has ${#cports[@]} ports for $cnodes nodes"
  [ "${#ccports[@]}" = "$cnodes" ] || die "KAFKA_CLUSTER_CONTROLLER_PORTS has ${#ccports[@]} ports for $cnodes nodes"
  local i v=""
  for i in $(seq 1 "$cnodes"); do v="${v:+$v,}$i@127.0.0.1:${ccports[$((i - 1))]}"; done
  voters="$v"
  replication=$(( cnodes < 3 ? cnodes : 3 ))
  min_isr=$(( replication >= 3 ? 2 : 1 ))
  heap="${KAFKA_CLUSTER_HEAP:--Xms256m -Xmx512m}"
  modefile="$chome/security.mode"
  local b=""
  for i in $(seq 1 "$cnodes"); do b="${b:+$b,}127.0.0.1:${cports[$((i - 1))]}"; done
  bootstrap="$b"
  client_extra="STIXBUS_BOOTSTRAP_SERVERS=$bootstrap
STIXBUS_REPLICATION_FACTOR=$replication
STIXBUS_MIN_INSYNC_REPLICAS=$min_isr"
}

select_node() {
  # Point the single-broker globals at node $1.
  local i="$1"
  case "$i" in ''|*[!0-9]*) die "node '$i' is not a number: use 1..$cnodes" ;; esac
  [ "$i" -ge 1 ] && [ "$i" -le "$cnodes" ] || die "node $i does not exist: use 1..$cnodes"
  node_id="$i"
  kdir="$chome/node$i"
  port="${cports[$((i - 1))]}"
  cport="${ccports[$((i - 1))]}"
  pidfile="$kdir/kafka.pid"
  logdir="$kdir/logs"
  props="$kdir/server.properties"
}

cluster_prepare_node() {
  mkdir -p "$kdir" "$logdir"
  ( umask 077
    server_props "$mode" "$secdir" "$kdir/data" "127.0.0.1:$cport" "127.0.0.1:$port" "127.0.0.1:$port" >"$props" )
  chmod 600 "$props"
}

cluster_up() {
  need_tools
  mkdir -p "$chome"
  make_private "$home"
  fetch_jars
  local i formatted
  if [ -f "$chome/node1/data/meta.properties" ]; then
    formatted="$(cat "$modefile" 2>/dev/null || echo plaintext)"
    if [ "$formatted" != "$mode" ]; then
      die "the cluster data in $chome was formatted for security mode '$formatted', not '$mode': set STIXBUS_KAFKA_SECURITY=$formatted, or wipe it with 'deploy/kafka/kafka.sh cluster reset'"
    fi
  fi
  if [ "$mode" = plaintext ]; then
    echo "kafka.sh: WARNING: security mode 'plaintext': no TLS, no authentication, no ACLs - quick local tests only." >&2
  else
    make_secrets
  fi
  for i in $(seq 1 "$cnodes"); do
    select_node "$i"
    if ! running && port_open "$port"; then
      die "port $port (node $i) is taken by a process this script did not start; stop it or set KAFKA_CLUSTER_PORTS"
    fi
    if ! running && port_open "$cport"; then
      die "controller port $cport (node $i) is taken; stop that process or set KAFKA_CLUSTER_CONTROLLER_PORTS"
    fi
    cluster_prepare_node
  done
  write_client_env
  if [ ! -f "$chome/node1/data/meta.properties" ]; then
    local cid; cid="$(new_cluster_id)"
    for i in $(seq 1 "$cnodes"); do select_node "$i"; format_storage "$cid"; done
    echo "$mode" >"$modefile"
  fi
  echo "kafka.sh: starting a $cnodes-node Kafka $(kafka_version) cluster on $bootstrap, security $mode, replication $replication, min.insync.replicas $min_isr"
  # Every node first (a quorum needs a majority of voters up), then wait for each.
  for i in $(seq 1 "$cnodes"); do
    select_node "$i"
    if running; then echo "kafka.sh: node $i already running (pid $(cat "$pidfile"))"; else start_jvm; fi
  done
  for i in $(seq 1 "$cnodes"); do select_node "$i"; wait_started; done
  echo "kafka.sh: cluster ready; clients: STIXBUS_BOOTSTRAP_SERVERS=$bootstrap (also in $secdir/client.env)"
}

cluster_start_node() {
  need_tools
  select_node "$1"
  [ -f "$kdir/data/meta.properties" ] || die "node $1 has no data in $kdir: run 'deploy/kafka/kafka.sh cluster up' first"
  if running; then echo "kafka.sh: node $1 already running (pid $(cat "$pidfile"))"; return 0; fi
  if [ "$mode" != plaintext ]; then make_passwords; fi
  cluster_prepare_node
  start_jvm
  wait_started
}

cluster_kill_node() {
  select_node "$1"
  if running; then
    kill -9 "$(cat "$pidfile")" 2>/dev/null || true
    echo "kafka.sh: node $1 killed (kill -9 pid $(cat "$pidfile"))"
  else
    echo "kafka.sh: node $1 not running"
  fi
  rm -f "$pidfile"
}

cluster_status() {
  local i up=0
  for i in $(seq 1 "$cnodes"); do
    select_node "$i"
    if running && ready; then echo "kafka.sh: node $i running on 127.0.0.1:$port"; up=$((up + 1)); else echo "kafka.sh: node $i not running"; fi
  done
  [ "$up" = "$cnodes" ]
}

cluster() {
  cluster_init
  local i
  case "${1:-}" in
    up) cluster_up ;;
    down) for i in $(seq "$cnodes" -1 1); do select_node "$i"; down; done ;;
    status) cluster_status ;;
    reset) for i in $(seq "$cnodes" -1 1); do select_node "$i"; down; done
           rm -rf "$chome"; echo "kafka.sh: cluster data removed (secrets in $secdir kept)" ;;
    logs) select_node "${2:-1}"; tail -n "${3:-100}" "$logdir/server.log" ;;
    kill) cluster_kill_node "${2:-}" ;;
    stop) select_node "${2:-}"; down ;;
    start) cluster_start_node "${2:-}" ;;
    *) echo "usage: $0 cluster up|down|status|reset|logs N [LINES]|kill N|stop N|start N" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if running && ready; then echo "kafka.sh: running on 127.0.0.1:$port"; else echo "kafka.sh: not running"; exit 1; fi ;;
  logs) tail -n "${2:-100}" "$logdir/server.log" ;;
  reset) reset ;;
  compose-secrets) compose_secrets ;;
  cluster) shift; cluster "$@" ;;
  *) echo "usage: $0 up|down|status|logs [N]|reset|compose-secrets|cluster ..." >&2; exit 2 ;;
esac
