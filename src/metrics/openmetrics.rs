//! The same metrics in OpenMetrics 1.0.0 text, for scrapers that ask for it
//! (`Accept: application/openmetrics-text`); everyone else gets the
//! Prometheus text format 0.0.4 (`prometheus::TextEncoder`), which
//! promtool 2.42 and every scraper accept.
//!
//! OpenMetrics differs where it matters here: a counter's family is named
//! without `_total` (its sample keeps it), `_info` gauges are the `info`
//! type, `le` values are canonical floats (`1.0`), and the body ends with
//! `# EOF`.

use std::fmt::Write as _;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};

/// The content type of [`encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Whether an `Accept` header asks for OpenMetrics (any version 1.0.0 or
/// none given, with a q-value above 0) rather than the 0.0.4 text.
pub fn wanted(accept: Option<&str>) -> bool {
    let Some(accept) = accept else {
        return false;
    };
    accept.split(',').any(|range| {
        let mut parts = range.split(';').map(str::trim);
        if !parts
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case("application/openmetrics-text"))
        {
            return false;
        }
        parts.all(|p| match p.split_once('=') {
            Some(("q", q)) => q.parse::<f64>().is_ok_and(|q| q > 0.0),
            Some(("version", v)) => v == "1.0.0",
            _ => true,
        })
    })
}

/// `families` in OpenMetrics text.
pub fn encode(families: &[MetricFamily]) -> String {
    let mut out = String::new();
    for mf in families {
        family(&mut out, mf);
    }
    out.push_str("# EOF\n");
    out
}

fn family(out: &mut String, mf: &MetricFamily) {
    let name = mf.name();
    let (family, kind) = match mf.get_field_type() {
        MetricType::COUNTER => (name.strip_suffix("_total").unwrap_or(name), "counter"),
        MetricType::GAUGE => match name.strip_suffix("_info") {
            Some(base) => (base, "info"),
            None => (name, "gauge"),
        },
        MetricType::HISTOGRAM => (name, "histogram"),
        MetricType::SUMMARY => (name, "summary"),
        MetricType::UNTYPED => (name, "unknown"),
    };
    let _ = writeln!(out, "# TYPE {family} {kind}");
    if !mf.help().is_empty() {
        let _ = writeln!(out, "# HELP {family} {}", escape(mf.help()));
    }
    for m in mf.get_metric() {
        match mf.get_field_type() {
            MetricType::COUNTER => sample(
                out,
                &format!("{family}_total"),
                m,
                None,
                m.get_counter().get_value(),
            ),
            MetricType::GAUGE => sample(out, name, m, None, m.get_gauge().get_value()),
            MetricType::HISTOGRAM => histogram(out, family, m),
            // This relay registers no summaries and no untyped metrics.
            MetricType::SUMMARY | MetricType::UNTYPED => {}
        }
    }
}

fn histogram(out: &mut String, family: &str, m: &Metric) {
    let h = m.get_histogram();
    let bucket = format!("{family}_bucket");
    let mut inf = false;
    for b in h.get_bucket() {
        let le = b.upper_bound();
        inf |= le.is_infinite() && le.is_sign_positive();
        sample(
            out,
            &bucket,
            m,
            Some(&float(le)),
            b.cumulative_count() as f64,
        );
    }
    if !inf {
        sample(out, &bucket, m, Some("+Inf"), h.get_sample_count() as f64);
    }
    sample(out, &format!("{family}_sum"), m, None, h.get_sample_sum());
    sample(
        out,
        &format!("{family}_count"),
        m,
        None,
        h.get_sample_count() as f64,
    );
}

fn sample(out: &mut String, name: &str, m: &Metric, le: Option<&str>, value: f64) {
    out.push_str(name);
    let labels: Vec<String> = m
        .get_label()
        .iter()
        .map(|l: &LabelPair| format!("{}=\"{}\"", l.name(), escape(l.value())))
        .chain(le.map(|le| format!("le=\"{le}\"")))
        .collect();
    if !labels.is_empty() {
        let _ = write!(out, "{{{}}}", labels.join(","));
    }
    let _ = writeln!(out, " {}", float_or_int(value));
}

/// A canonical float: `1.0`, `0.25`, `+Inf`.
fn float(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        v.to_string()
    }
}

/// A sample value: whole numbers (counts) without a fraction.
fn float_or_int(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        float(v)
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_accept_header_that_asks_for_openmetrics_gets_it() {
        assert!(!wanted(None));
        assert!(!wanted(Some("text/plain;version=0.0.4")));
        assert!(!wanted(Some("*/*")));
        // Prometheus's own scrape header.
        assert!(wanted(Some(
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
        )));
        assert!(wanted(Some("application/openmetrics-text")));
        assert!(!wanted(Some("application/openmetrics-text; q=0")));
        assert!(!wanted(Some("application/openmetrics-text;version=0.0.1")));
    }

    #[test]
    fn floats_are_canonical() {
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(0.0025), "0.0025");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float_or_int(3.0), "3");
        assert_eq!(float_or_int(0.5), "0.5");
    }
}
