//! OpenTelemetry metrics: one meter provider per service, OTLP push and a Prometheus scrape endpoint.
