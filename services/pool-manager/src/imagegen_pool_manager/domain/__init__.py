"""Pure domain: no Kafka, SQL or torch imports."""
