//! Metric families built at scrape time from a snapshot: every sample is a constant, and
//! the whole set encodes through `prometheus-client` as one [`Collector`].

use std::collections::BTreeMap;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// A sample's labels, in order.
pub type Labels = Vec<(String, String)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: Kind,
    samples: Vec<(Labels, f64)>,
}

/// Metric families by name, each with its samples.
#[derive(Debug, Default)]
pub struct Families {
    families: BTreeMap<&'static str, Family>,
}

impl Families {
    /// Adds a counter sample. `name` is the family's name without `_total`; the
    /// exposition adds it to the sample (`kubevirt_vmi_cpu_usage_seconds` gives
    /// `kubevirt_vmi_cpu_usage_seconds_total`).
    pub fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.add(name, help, Kind::Counter, labels, value);
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, value: f64) {
        self.add(name, help, Kind::Gauge, labels, value);
    }

    fn add(&mut self, name: &'static str, help: &'static str, kind: Kind, labels: Labels, v: f64) {
        // prometheus-client writes label names and values as they are; names and values
        // come from users and guests here (VMI labels, the guest's OS name), so they are
        // made safe first: a newline or quote must not end a sample and forge another.
        // Two keys that become one name (`a.b`, `a-b`) would make a sample Prometheus
        // rejects, failing the whole scrape: the later one's value is kept, in the
        // earlier one's place.
        let mut safe: Labels = Vec::with_capacity(labels.len());
        for (k, v) in labels {
            let (k, v) = (label_name(&k), escape(&v));
            match safe.iter_mut().find(|(taken, _)| *taken == k) {
                Some(slot) => slot.1 = v,
                None => safe.push((k, v)),
            }
        }
        let labels = safe;
        let family = self.families.entry(name).or_insert(Family {
            help,
            kind,
            samples: Vec::new(),
        });
        debug_assert_eq!(family.kind, kind, "{name} is both a counter and a gauge");
        family.samples.push((labels, v));
    }

    /// Takes every family of `other` in.
    pub fn extend(&mut self, other: Families) {
        for (name, mut family) in other.families {
            match self.families.get_mut(name) {
                Some(f) => f.samples.append(&mut family.samples),
                None => {
                    self.families.insert(name, family);
                }
            }
        }
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.families.values().map(|f| f.samples.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A valid Prometheus label name: anything but `[a-zA-Z0-9_]` becomes `_`, and a leading
/// digit gets a `_` before it.
fn label_name(k: &str) -> String {
    let mut out: String = k
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A label value escaped as the text format wants: `\`, `\"` and `\n`.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn encode_value(
    kind: Kind,
    v: f64,
    sample: prometheus_client::encoding::MetricEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    match kind {
        Kind::Counter => ConstCounter::new(v).encode(sample),
        Kind::Gauge => ConstGauge::new(v).encode(sample),
    }
}

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, family) in &self.families {
            let kind = match family.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Gauge => MetricType::Gauge,
            };
            let mut metric = encoder.encode_descriptor(name, family.help, None, kind)?;
            match family.samples.as_slice() {
                // A family without labels is written `name value`, not `name{} value`.
                [(labels, v)] if labels.is_empty() => encode_value(family.kind, *v, metric)?,
                samples => {
                    for (labels, v) in samples {
                        encode_value(family.kind, *v, metric.encode_family(labels)?)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// The OpenMetrics text exposition of `f` alone (what a component's `/metrics` serves).
pub fn encode_text(f: Families) -> String {
    let mut r = prometheus_client::registry::Registry::default();
    r.register_collector(Box::new(f));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &r);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: Families) -> String {
        encode_text(f)
    }

    #[test]
    fn counters_gain_total_and_samples_keep_their_labels() {
        let mut f = Families::default();
        let l = |n: &str| vec![("name".to_string(), n.to_string())];
        f.counter("kubevirt_vmi_cpu_usage_seconds", "CPU.", l("a"), 1.5);
        f.counter("kubevirt_vmi_cpu_usage_seconds", "CPU.", l("b"), 2.0);
        f.gauge(
            "kubevirt_vmi_memory_domain_bytes",
            "Memory.",
            l("a"),
            1024.0,
        );
        let mut g = Families::default();
        g.gauge(
            "kubevirt_vmi_memory_domain_bytes",
            "Memory.",
            l("c"),
            2048.0,
        );
        f.extend(g);
        assert_eq!(f.len(), 4);
        let t = text(f);
        assert!(
            t.contains("# TYPE kubevirt_vmi_cpu_usage_seconds counter\n"),
            "{t}"
        );
        assert!(
            t.contains("kubevirt_vmi_cpu_usage_seconds_total{name=\"a\"} 1.5\n"),
            "{t}"
        );
        assert!(
            t.contains("kubevirt_vmi_cpu_usage_seconds_total{name=\"b\"} 2.0\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE kubevirt_vmi_memory_domain_bytes gauge\n"),
            "{t}"
        );
        assert!(
            t.contains("kubevirt_vmi_memory_domain_bytes{name=\"c\"} 2048.0\n"),
            "{t}"
        );
    }

    #[test]
    fn keys_that_become_one_name_leave_one_label() {
        let mut f = Families::default();
        let l = vec![
            ("name".to_string(), "vm".to_string()),
            ("label_a.b".to_string(), "first".to_string()),
            ("label_c".to_string(), "c".to_string()),
            ("label_a-b".to_string(), "second".to_string()),
        ];
        f.gauge("g", "G.", l, 1.0);
        let t = text(f);
        assert!(
            t.lines()
                .any(|line| line == r#"g{name="vm",label_a_b="second",label_c="c"} 1.0"#),
            "{t}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut f = Families::default();
        let hostile = "a\"b\\c\nd".to_string();
        f.gauge("g", "G.", vec![("name".into(), hostile)], 1.0);
        f.gauge(
            "g",
            "G.",
            vec![("kubernetes_vmi_label_a.b/c-d".into(), "v".into())],
            2.0,
        );
        let t = text(f);
        assert!(t.contains(r#"g{name="a\"b\\c\nd"} 1.0"#), "{t}");
        assert!(
            t.contains(r#"g{kubernetes_vmi_label_a_b_c_d="v"} 2.0"#),
            "{t}"
        );
        // Every sample is one line: the value could not end it early.
        assert_eq!(t.lines().filter(|l| l.starts_with("g{")).count(), 2, "{t}");
    }
}
