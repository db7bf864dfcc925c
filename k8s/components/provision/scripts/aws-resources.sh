#!/bin/sh
# Creates the SQS FIFO queue with its dead-letter queue and the Tier-1 DynamoDB tables on an
# AWS emulator (moto); safe to run again. In AWS the SAM/Terraform stacks own these resources.
# Env: AWS_ENDPOINT_URL (e.g. http://moto:5000), AWS_DEFAULT_REGION, and dummy credentials.
set -eu
: "${AWS_ENDPOINT_URL:?set AWS_ENDPOINT_URL to the emulator}"
QUEUE="${QUEUE:-ticket-events.fifo}"
DLQ="${DLQ:-ticket-events-dlq.fifo}"
MAX_RECEIVES="${MAX_RECEIVES:-3}"
COUNTERS="${COUNTERS:-counters}"
POSITIONS="${POSITIONS:-positions}"

tries=0
until aws sqs list-queues >/dev/null 2>&1; do
  tries=$((tries + 1))
  if [ "$tries" -ge 60 ]; then
    echo "AWS emulator at $AWS_ENDPOINT_URL not reachable" >&2
    exit 1
  fi
  sleep 2
done

# Dead-letter queue first: the main queue's redrive policy names its ARN.
# 14 days on the DLQ, 4 days and a 5-minute visibility timeout on the queue (seed 004 §5.6).
dlq_url=$(aws sqs create-queue --queue-name "$DLQ" --output text --query QueueUrl \
  --attributes FifoQueue=true,ContentBasedDeduplication=true,MessageRetentionPeriod=1209600)
dlq_arn=$(aws sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names QueueArn \
  --output text --query Attributes.QueueArn)
cat >/tmp/queue-attributes.json <<JSON
{
  "FifoQueue": "true",
  "ContentBasedDeduplication": "true",
  "MessageRetentionPeriod": "345600",
  "VisibilityTimeout": "300",
  "ReceiveMessageWaitTimeSeconds": "10",
  "RedrivePolicy": "{\"deadLetterTargetArn\":\"$dlq_arn\",\"maxReceiveCount\":\"$MAX_RECEIVES\"}"
}
JSON
aws sqs create-queue --queue-name "$QUEUE" --attributes file:///tmp/queue-attributes.json \
  --output text --query QueueUrl

if ! aws dynamodb describe-table --table-name "$COUNTERS" >/dev/null 2>&1; then
  aws dynamodb create-table --table-name "$COUNTERS" --billing-mode PAY_PER_REQUEST \
    --attribute-definitions AttributeName=eventId,AttributeType=S \
    --key-schema AttributeName=eventId,KeyType=HASH >/dev/null
fi
if ! aws dynamodb describe-table --table-name "$POSITIONS" >/dev/null 2>&1; then
  aws dynamodb create-table --table-name "$POSITIONS" --billing-mode PAY_PER_REQUEST \
    --attribute-definitions AttributeName=eventId,AttributeType=S \
      AttributeName=requestId,AttributeType=S \
    --key-schema AttributeName=eventId,KeyType=HASH AttributeName=requestId,KeyType=RANGE \
    >/dev/null
  aws dynamodb update-time-to-live --table-name "$POSITIONS" \
    --time-to-live-specification Enabled=true,AttributeName=ttl >/dev/null
fi
aws dynamodb list-tables --output text
