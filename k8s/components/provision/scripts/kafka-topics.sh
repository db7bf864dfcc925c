#!/bin/sh
# Creates the suite's Kafka topics with the environment's layout, safe to run again
# (--if-not-exists), then reads each back and fails when one differs from the layout.
# Env: BOOTSTRAP (host:port), PARTITIONS (default 3), REPLICATION (default 1), MIN_ISR
# (default 1), RETENTION_MS (default 7 days). Seed 004 for MSK: 3 partitions, RF 2, min ISR 2.
# COMMAND_CONFIG: optional client properties file (TLS / SASL for MSK).
set -eu
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
PARTITIONS="${PARTITIONS:-3}"
REPLICATION="${REPLICATION:-1}"
MIN_ISR="${MIN_ISR:-1}"
RETENTION_MS="${RETENTION_MS:-604800000}"
if [ "$MIN_ISR" -gt "$REPLICATION" ]; then
  echo "MIN_ISR ($MIN_ISR) cannot exceed REPLICATION ($REPLICATION)" >&2
  exit 2
fi
set --
if [ -n "${COMMAND_CONFIG:-}" ]; then
  set -- --command-config "$COMMAND_CONFIG"
fi
TOPICS="payment-events reservation-events transfer-events membership-events queue-events"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"

# The broker may still be electing its controller when this starts: wait up to 2 minutes.
tries=0
until "$KAFKA_BIN/kafka-broker-api-versions.sh" --bootstrap-server "$BOOTSTRAP" "$@" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "kafka at $BOOTSTRAP not reachable" >&2
    exit 1
  fi
  sleep 2
done

for topic in $TOPICS; do
  "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" "$@" --create --if-not-exists \
    --topic "$topic" --partitions "$PARTITIONS" --replication-factor "$REPLICATION" \
    --config "min.insync.replicas=$MIN_ISR" --config "retention.ms=$RETENTION_MS"
done

# Verify: a topic created earlier by hand or with another layout is an error, not a surprise.
failed=0
for topic in $TOPICS; do
  described="$("$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" "$@" --describe --topic "$topic")"
  echo "$described" | grep -q "PartitionCount: $PARTITIONS\b" \
    || { echo "$topic: partitions differ from $PARTITIONS" >&2; failed=1; }
  echo "$described" | grep -q "ReplicationFactor: $REPLICATION\b" \
    || { echo "$topic: replication factor differs from $REPLICATION" >&2; failed=1; }
  echo "$described" | grep -q "min.insync.replicas=$MIN_ISR\b" \
    || { echo "$topic: min.insync.replicas differs from $MIN_ISR" >&2; failed=1; }
  echo "$described" | grep -q "retention.ms=$RETENTION_MS\b" \
    || { echo "$topic: retention.ms differs from $RETENTION_MS" >&2; failed=1; }
done
"$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" "$@" --list
exit "$failed"
