//! Logs and OpenTelemetry traces over OTLP, and W3C trace-context propagation.
