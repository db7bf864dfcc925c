#!/bin/sh
# Creates the suite's Kafka topics; safe to run again (--if-not-exists).
# Env: BOOTSTRAP (host:port), PARTITIONS (default 3), REPLICATION (default 1).
set -eu
BOOTSTRAP="${BOOTSTRAP:-kafka:9092}"
PARTITIONS="${PARTITIONS:-3}"
REPLICATION="${REPLICATION:-1}"
TOPICS="payment-events reservation-events transfer-events membership-events queue-events"
KAFKA_BIN="${KAFKA_BIN:-/opt/kafka/bin}"

# The broker may still be electing its controller when this starts: wait up to 2 minutes.
tries=0
until "$KAFKA_BIN/kafka-broker-api-versions.sh" --bootstrap-server "$BOOTSTRAP" >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "kafka at $BOOTSTRAP not reachable" >&2
    exit 1
  fi
  sleep 2
done

for topic in $TOPICS; do
  "$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$topic" --partitions "$PARTITIONS" --replication-factor "$REPLICATION"
done
"$KAFKA_BIN/kafka-topics.sh" --bootstrap-server "$BOOTSTRAP" --list
