#!/usr/bin/env bash
# Make sure a RabbitMQ broker listens on 127.0.0.1:5672 with the management plugin enabled.
# Starts the local rabbitmq-server when none is listening. Safe to run repeatedly.
set -u
port_open() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
if ! port_open 5672; then
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "broker.sh: no broker on 127.0.0.1:5672 and rabbitmq-server is not installed" >&2
    echo "broker.sh: install it (apt-get install rabbitmq-server) or set FEDMQ_AMQP_URL" >&2
    exit 0
  fi
  echo "broker.sh: starting rabbitmq-server"
  rabbitmq-server -detached >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do port_open 5672 && break; sleep 1; done
  rabbitmqctl await_startup >/dev/null 2>&1 || true
fi
if command -v rabbitmq-plugins >/dev/null 2>&1 && ! port_open 15672; then
  rabbitmq-plugins enable rabbitmq_management >/dev/null 2>&1 || true
  for _ in $(seq 1 30); do port_open 15672 && break; sleep 1; done
fi
# The tests lower max_message_size only on a private node of their own (tests/private_rabbitmq.py),
# but older checkouts lowered it on this broker for one test and restored it; a run killed in
# between left it low, so put back at least RabbitMQ's default (128 MiB).
if command -v rabbitmqctl >/dev/null 2>&1 && port_open 5672; then
  size=$(rabbitmqctl eval 'application:get_env(rabbit, max_message_size).' 2>/dev/null \
         | sed -n 's/.*{ok,\([0-9]*\)}.*/\1/p')
  if [ -n "$size" ] && [ "$size" -lt 134217728 ]; then
    rabbitmqctl eval 'application:set_env(rabbit, max_message_size, 134217728).' >/dev/null 2>&1
    echo "broker.sh: max_message_size was $size; reset to 128 MiB"
  fi
fi
port_open 5672 && echo "broker.sh: RabbitMQ is up on 127.0.0.1:5672" || echo "broker.sh: RabbitMQ is NOT up" >&2
exit 0
