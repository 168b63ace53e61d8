//! Prometheus text for `/metrics`: requests by route and status, and objects and bytes per tier.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::Arc;

use crate::api::TierInfo;

/// Counts answered requests. Keys are route templates, never raw paths, so the number of
/// series is bounded by the number of routes.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl Metrics {
    fn record(&self, method: &str, route: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests
            .entry((method.to_string(), route.to_string(), status))
            .or_insert(0) += 1;
    }

    pub fn render(&self, tiers: &[TierInfo]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP letl_http_requests_total HTTP requests answered, by method, route and status."
        );
        let _ = writeln!(out, "# TYPE letl_http_requests_total counter");
        for ((method, route, status), count) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "letl_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {count}",
                escape(route)
            );
        }
        let gauges: [(&str, &str, TierValue); 5] = [
            (
                "letl_tier_up",
                "1 when the tier's actor serves requests, 0 when it is down.",
                |t| Some(u64::from(t.up)),
            ),
            ("letl_tier_objects", "Objects stored on a tier.", |t| {
                Some(t.objects)
            }),
            (
                "letl_tier_bytes",
                "Bytes of objects stored on a tier.",
                |t| Some(t.bytes),
            ),
            (
                "letl_tier_used_bytes",
                "Bytes counted against a tier's capacity, puts in progress included.",
                |t| Some(t.used_bytes),
            ),
            (
                "letl_tier_capacity_bytes",
                "Configured capacity of a tier (absent when unlimited).",
                |t| t.capacity_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for tier in tiers.iter().filter(|t| t.up || name == "letl_tier_up") {
                if let Some(v) = value(tier) {
                    let _ = writeln!(
                        out,
                        "{name}{{tier=\"{}\",kind=\"{}\"}} {v}",
                        escape(&tier.name),
                        escape(&tier.kind)
                    );
                }
            }
        }
        out
    }
}

/// Pipeline figures for `/metrics`: totals per pipeline (bounded by the pipelines registered)
/// and live figures per running job (bounded by the jobs running).
/// Object bytes this node's data plane sent to and received from other nodes.
pub fn render_data_plane(sent: u64, received: u64) -> String {
    format!(
        "# HELP letl_data_plane_bytes_sent_total Object bytes sent to other nodes.\n\
         # TYPE letl_data_plane_bytes_sent_total counter\n\
         letl_data_plane_bytes_sent_total {sent}\n\
         # HELP letl_data_plane_bytes_received_total Object bytes received from other nodes.\n\
         # TYPE letl_data_plane_bytes_received_total counter\n\
         letl_data_plane_bytes_received_total {received}\n"
    )
}

pub fn render_pipelines(
    pipelines: &[(String, crate::pipelines::PipelineStats)],
    running: &[(String, letl_actors::pipeline::JobStats)],
) -> String {
    type Total = fn(&crate::pipelines::PipelineStats) -> u64;
    let totals: [(&str, &str, Total); 9] = [
        ("letl_pipeline_jobs_total", "Jobs run.", |s| s.jobs),
        ("letl_pipeline_objects_in_total", "Objects taken in.", |s| {
            s.objects_in
        }),
        ("letl_pipeline_bytes_in_total", "Bytes taken in.", |s| {
            s.bytes_in
        }),
        (
            "letl_pipeline_objects_out_total",
            "Objects produced.",
            |s| s.objects_out,
        ),
        ("letl_pipeline_bytes_out_total", "Bytes produced.", |s| {
            s.bytes_out
        }),
        (
            "letl_pipeline_skipped_total",
            "Inputs skipped as already produced.",
            |s| s.skipped,
        ),
        (
            "letl_pipeline_dead_lettered_total",
            "Objects dead-lettered.",
            |s| s.dead_lettered,
        ),
        (
            "letl_pipeline_transform_workers_provisioned_total",
            "Transform workers started.",
            |s| s.transform_workers_provisioned,
        ),
        (
            "letl_pipeline_transform_threshold_breaches_total",
            "Times a transform queue passed its threshold.",
            |s| s.transform_threshold_breaches,
        ),
    ];
    let mut out = String::new();
    for (name, help, value) in totals {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        for (pipeline, stats) in pipelines {
            let _ = writeln!(
                out,
                "{name}{{pipeline=\"{}\"}} {}",
                escape(pipeline),
                value(stats)
            );
        }
    }
    type StageValue = fn(&letl_actors::pipeline::StageStats) -> u64;
    let stage_gauges: [(&str, &str, StageValue); 2] = [
        (
            "letl_job_stage_workers",
            "Workers of a running job's stage.",
            |s| s.workers,
        ),
        (
            "letl_job_stage_queue",
            "Items queued before a running job's stage.",
            |s| s.queue_len,
        ),
    ];
    for (name, help, value) in stage_gauges {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for (job, stats) in running {
            for (stage, s) in [
                ("extract", &stats.extract),
                ("transform", &stats.transform),
                ("load", &stats.load),
            ] {
                let _ = writeln!(
                    out,
                    "{name}{{job=\"{}\",stage=\"{stage}\"}} {}",
                    escape(job),
                    value(s)
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP letl_job_objects_out Objects a running job produced so far."
    );
    let _ = writeln!(out, "# TYPE letl_job_objects_out gauge");
    for (job, stats) in running {
        let _ = writeln!(
            out,
            "letl_job_objects_out{{job=\"{}\"}} {}",
            escape(job),
            stats.objects_out
        );
    }
    out
}

/// Reads one gauge's value off a tier (`None`: no sample for that tier).
type TierValue = fn(&TierInfo) -> Option<u64>;

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Middleware: counts every request by its matched route (or `unmatched`).
pub async fn record(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    metrics.record(&method, &route, response.status().as_u16());
    response
}
