#!/usr/bin/env bash
# Starts the compose file's Kafka broker (apache/kafka image, KRaft, one node) with every
# client listener authenticated by SASL/SCRAM-SHA-512. It replaces the image's own start-up
# script, whose storage format cannot create SCRAM users: here `kafka-storage.sh format
# --add-scram` writes them into the metadata log before the broker first runs (KIP-900),
# so no listener ever has to accept a client without a password.
#
# Listeners:
#   INTERNAL  :29092  SASL_PLAINTEXT  the compose network (the services; inter-broker)
#   EXTERNAL  :9092   SASL_SSL when $KAFKA_TLS_DIR/server.pem exists, SASL_PLAINTEXT
#                     otherwise; the one published to the host
#   CONTROLLER localhost:9093  PLAINTEXT, KRaft's own; bound to the container's loopback
#
# Environment (docker-compose.yml sets it; the passwords come from the deployment's .env):
#   KAFKA_CLUSTER_ID          KRaft cluster id (kafka-storage.sh random-uuid)
#   KAFKA_ADMIN_PASSWORD      password of `admin`, the broker's own user (inter-broker, ops)
#   KAFKA_CLIENT_USER         the services' user (giapranh)
#   KAFKA_CLIENT_PASSWORD     its password
#   KAFKA_EXTERNAL_HOST       host name clients outside use (advertised; the certificate's)
#   KAFKA_TLS_DIR             /etc/kafka/tls: server.pem = PKCS#8 key + certificate chain
#   KAFKA_LOG_RETENTION_HOURS how long topics keep messages (default 168, 7 days; compacted
#                             topics keep each key's latest value regardless)
# SCRAM users are created at the first start only (the storage is then formatted): change a
# password later with kafka-configs.sh (README, "Kafka security").
set -euo pipefail
umask 077

KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
DATA_DIR=${KAFKA_DATA_DIR:-/var/lib/kafka/data}
RUN_DIR=${KAFKA_RUN_DIR:-/tmp/giapranh-kafka}
TLS_DIR=${KAFKA_TLS_DIR:-/etc/kafka/tls}
EXTERNAL_HOST=${KAFKA_EXTERNAL_HOST:-localhost}
RETENTION_HOURS=${KAFKA_LOG_RETENTION_HOURS:-168}
MECHANISM=SCRAM-SHA-512
ADMIN_USER=admin

fail() { echo "start-kafka: $*" >&2; exit 1; }

: "${KAFKA_CLUSTER_ID:?set KAFKA_CLUSTER_ID}"
for name in KAFKA_ADMIN_PASSWORD KAFKA_CLIENT_USER KAFKA_CLIENT_PASSWORD; do
    [[ -n ${!name:-} ]] || fail "set $name"
done
# The values go into JAAS and --add-scram syntax unquoted: keep them to safe characters.
[[ $KAFKA_CLIENT_USER =~ ^[A-Za-z0-9_.-]+$ ]] || fail "KAFKA_CLIENT_USER: letters, digits, _ . - only"
[[ $KAFKA_CLIENT_USER != "$ADMIN_USER" ]] || fail "KAFKA_CLIENT_USER must not be $ADMIN_USER"
for name in KAFKA_ADMIN_PASSWORD KAFKA_CLIENT_PASSWORD; do
    [[ ${!name} =~ ^[A-Za-z0-9_-]{16,}$ ]] ||
        fail "$name: at least 16 letters, digits, _ or - (e.g. openssl rand -hex 32)"
done
[[ $RETENTION_HOURS =~ ^[1-9][0-9]*$ ]] || fail "KAFKA_LOG_RETENTION_HOURS: a whole number of hours"

if [[ -f $TLS_DIR/server.pem ]]; then
    EXTERNAL_PROTOCOL=SASL_SSL
else
    EXTERNAL_PROTOCOL=SASL_PLAINTEXT
    echo "start-kafka: no $TLS_DIR/server.pem: the EXTERNAL listener is SASL_PLAINTEXT" \
         "(authenticated, not encrypted)" >&2
fi

mkdir -p "$RUN_DIR" "$DATA_DIR"
jaas() { echo "org.apache.kafka.common.security.scram.ScramLoginModule required$1;"; }
ADMIN_JAAS=$(jaas " username=\"$ADMIN_USER\" password=\"$KAFKA_ADMIN_PASSWORD\"")

cat > "$RUN_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@localhost:9093
controller.listener.names=CONTROLLER
listeners=INTERNAL://:29092,EXTERNAL://:9092,CONTROLLER://localhost:9093
advertised.listeners=INTERNAL://kafka:29092,EXTERNAL://$EXTERNAL_HOST:9092
listener.security.protocol.map=INTERNAL:SASL_PLAINTEXT,EXTERNAL:$EXTERNAL_PROTOCOL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
sasl.enabled.mechanisms=$MECHANISM
sasl.mechanism.inter.broker.protocol=$MECHANISM
listener.name.internal.scram-sha-512.sasl.jaas.config=$ADMIN_JAAS
listener.name.external.scram-sha-512.sasl.jaas.config=$(jaas "")
log.dirs=$DATA_DIR
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=$RETENTION_HOURS
EOF
if [[ $EXTERNAL_PROTOCOL == SASL_SSL ]]; then
    cat >> "$RUN_DIR/server.properties" <<EOF
listener.name.external.ssl.keystore.type=PEM
listener.name.external.ssl.keystore.location=$TLS_DIR/server.pem
EOF
fi

# For the health check and for operators (docker compose exec kafka ... --command-config).
cat > "$RUN_DIR/admin.properties" <<EOF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=$MECHANISM
sasl.jaas.config=$ADMIN_JAAS
EOF

"$KAFKA_HOME/bin/kafka-storage.sh" format --ignore-formatted \
    --cluster-id "$KAFKA_CLUSTER_ID" --config "$RUN_DIR/server.properties" \
    --add-scram "$MECHANISM=[name=$ADMIN_USER,password=$KAFKA_ADMIN_PASSWORD]" \
    --add-scram "$MECHANISM=[name=$KAFKA_CLIENT_USER,password=$KAFKA_CLIENT_PASSWORD]"

exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$RUN_DIR/server.properties"
