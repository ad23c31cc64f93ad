//! The price table: what a second of compute and a million tokens cost. The defaults are
//! documented in `docs/cost.md`; a YAML file (`caged server --prices FILE`) changes any of them.

use std::collections::BTreeMap;

use caged_domain::ConfigError;
use serde::{Deserialize, Serialize};

use crate::usage::Usage;
use crate::{Micros, deserialize_usd};

/// Prices of one model, per million tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    #[serde(deserialize_with = "deserialize_usd")]
    pub input: Micros,
    #[serde(deserialize_with = "deserialize_usd")]
    pub output: Micros,
    /// Input tokens read from the provider's prompt cache (default: the input price).
    #[serde(
        default,
        deserialize_with = "deserialize_optional_usd",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_read: Option<Micros>,
    /// Input tokens written to the provider's prompt cache (default: the input price).
    #[serde(
        default,
        deserialize_with = "deserialize_optional_usd",
        skip_serializing_if = "Option::is_none"
    )]
    pub cache_write: Option<Micros>,
}

fn deserialize_optional_usd<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Micros>, D::Error> {
    deserialize_usd(deserializer).map(Some)
}

impl ModelPrice {
    const fn new(input: i64, output: i64, cache_read: i64, cache_write: i64) -> ModelPrice {
        ModelPrice {
            input: Micros(input),
            output: Micros(output),
            cache_read: Some(Micros(cache_read)),
            cache_write: Some(Micros(cache_write)),
        }
    }

    /// The cost of one call's tokens, rounded up to the next micro-dollar (a budget is never
    /// under-charged).
    pub fn cost(&self, usage: &Usage) -> Micros {
        let per_million = |tokens: u64, price: Micros| i128::from(tokens) * i128::from(price.0);
        let total = per_million(usage.input, self.input)
            + per_million(usage.output, self.output)
            + per_million(usage.cache_read, self.cache_read.unwrap_or(self.input))
            + per_million(usage.cache_write, self.cache_write.unwrap_or(self.input));
        let micros = (total + 999_999) / 1_000_000;
        Micros(micros.min(i128::from(i64::MAX)) as i64)
    }
}

/// Compute prices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputePrices {
    /// One virtual CPU for an hour of running.
    #[serde(deserialize_with = "deserialize_usd")]
    pub vcpu_hour: Micros,
    /// One GiB of memory for an hour of running.
    #[serde(deserialize_with = "deserialize_usd")]
    pub gib_hour: Micros,
}

/// The whole table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prices {
    pub compute: ComputePrices,
    /// By model name; a name also prices its dated versions (`gpt-4o` prices
    /// `gpt-4o-2024-08-06`), the longest matching name winning.
    pub models: BTreeMap<String, ModelPrice>,
    /// For a model the table does not list (so a budget still holds).
    pub default_model: ModelPrice,
}

/// The file's shape: every key optional; `models` adds to (or replaces entries of) the
/// default table.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesFile {
    #[serde(default)]
    compute: Option<ComputePrices>,
    #[serde(default)]
    models: BTreeMap<String, ModelPrice>,
    #[serde(default)]
    default_model: Option<ModelPrice>,
    /// Start from an empty model table instead of the defaults.
    #[serde(default)]
    replace_models: bool,
}

/// Published list prices (USD per million tokens) of common models, late 2025.
const DEFAULT_MODELS: &[(&str, ModelPrice)] = &[
    (
        "gpt-5",
        ModelPrice::new(1_250_000, 10_000_000, 125_000, 1_250_000),
    ),
    (
        "gpt-5-mini",
        ModelPrice::new(250_000, 2_000_000, 25_000, 250_000),
    ),
    (
        "gpt-5-nano",
        ModelPrice::new(50_000, 400_000, 5_000, 50_000),
    ),
    (
        "gpt-4.1",
        ModelPrice::new(2_000_000, 8_000_000, 500_000, 2_000_000),
    ),
    (
        "gpt-4.1-mini",
        ModelPrice::new(400_000, 1_600_000, 100_000, 400_000),
    ),
    (
        "gpt-4.1-nano",
        ModelPrice::new(100_000, 400_000, 25_000, 100_000),
    ),
    (
        "gpt-4o",
        ModelPrice::new(2_500_000, 10_000_000, 1_250_000, 2_500_000),
    ),
    (
        "gpt-4o-mini",
        ModelPrice::new(150_000, 600_000, 75_000, 150_000),
    ),
    (
        "o3",
        ModelPrice::new(2_000_000, 8_000_000, 500_000, 2_000_000),
    ),
    (
        "o4-mini",
        ModelPrice::new(1_100_000, 4_400_000, 275_000, 1_100_000),
    ),
    (
        "text-embedding-3-small",
        ModelPrice::new(20_000, 0, 20_000, 20_000),
    ),
    (
        "text-embedding-3-large",
        ModelPrice::new(130_000, 0, 130_000, 130_000),
    ),
    (
        "claude-opus-4",
        ModelPrice::new(15_000_000, 75_000_000, 1_500_000, 18_750_000),
    ),
    (
        "claude-opus-4-1",
        ModelPrice::new(15_000_000, 75_000_000, 1_500_000, 18_750_000),
    ),
    (
        "claude-opus-4-5",
        ModelPrice::new(5_000_000, 25_000_000, 500_000, 6_250_000),
    ),
    (
        "claude-sonnet-4",
        ModelPrice::new(3_000_000, 15_000_000, 300_000, 3_750_000),
    ),
    (
        "claude-sonnet-4-5",
        ModelPrice::new(3_000_000, 15_000_000, 300_000, 3_750_000),
    ),
    (
        "claude-haiku-4-5",
        ModelPrice::new(1_000_000, 5_000_000, 100_000, 1_250_000),
    ),
    (
        "claude-3-7-sonnet",
        ModelPrice::new(3_000_000, 15_000_000, 300_000, 3_750_000),
    ),
    (
        "claude-3-5-haiku",
        ModelPrice::new(800_000, 4_000_000, 80_000, 1_000_000),
    ),
];

impl Default for Prices {
    fn default() -> Prices {
        Prices {
            // $0.000014 per vCPU-second and $0.0000045 per GiB-second, as sandbox clouds charge.
            compute: ComputePrices {
                vcpu_hour: Micros(50_400),
                gib_hour: Micros(16_200),
            },
            models: DEFAULT_MODELS
                .iter()
                .map(|(name, price)| (name.to_string(), *price))
                .collect(),
            // An unknown model is priced like a large one, so a budget errs on the safe side.
            default_model: ModelPrice::new(3_000_000, 15_000_000, 3_000_000, 3_000_000),
        }
    }
}

impl Prices {
    /// Reads a price file over the defaults; errors name the key and line.
    pub fn from_yaml(text: &str) -> Result<Prices, ConfigError> {
        let file: PricesFile = caged_domain::config::from_yaml_document(text)?;
        let mut prices = Prices::default();
        if let Some(compute) = file.compute {
            prices.compute = compute;
        }
        if file.replace_models {
            prices.models.clear();
        }
        for (name, price) in file.models {
            prices.models.insert(name.to_ascii_lowercase(), price);
        }
        if let Some(default_model) = file.default_model {
            prices.default_model = default_model;
        }
        Ok(prices)
    }

    /// The price of a model: its own entry, or the longest listed name it is a dated or
    /// suffixed version of, or the default. Returns the name that matched (`None`: default).
    pub fn model(&self, model: &str) -> (Option<&str>, &ModelPrice) {
        let model = model.to_ascii_lowercase();
        // `openai/gpt-4o`, `anthropic.claude-sonnet-4-5@…`: the provider's prefix is not the model.
        let model = model.rsplit('/').next().unwrap_or(&model);
        let model = model.strip_prefix("anthropic.").unwrap_or(model);
        let best = self
            .models
            .iter()
            .filter(|(name, _)| {
                model == name.as_str()
                    || model
                        .strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with(['-', '@', ':', '.']))
            })
            .max_by_key(|(name, _)| name.len());
        match best {
            Some((name, price)) => (Some(name.as_str()), price),
            None => (None, &self.default_model),
        }
    }

    /// What running for `running_ms` costs with `milli_cpus` thousandths of a vCPU and
    /// `memory_mb` MiB of memory: computed from the total, rounded down once, so the sum of
    /// exact intervals is billed exactly.
    pub fn compute_cost(&self, running_ms: i64, milli_cpus: i64, memory_mb: i64) -> Micros {
        // micros = ms / 3.6e6 h × (mcpu/1000 × vcpu_hour + MiB/1024 × gib_hour)
        let per_hour_scaled =
            i128::from(milli_cpus.max(0)) * i128::from(self.compute.vcpu_hour.0) * 1024
                + i128::from(memory_mb.max(0)) * i128::from(self.compute.gib_hour.0) * 1000;
        let total = i128::from(running_ms.max(0)) * per_hour_scaled / (3_600_000 * 1000 * 1024);
        Micros(total.min(i128::from(i64::MAX)) as i64)
    }
}

/// A sandbox's vCPUs in thousandths (`cpu: 0.5` is 500).
pub fn milli_cpus(cpu: f64) -> i64 {
    (cpu * 1000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_cost_follows_the_exact_running_time() {
        let prices = Prices::default();
        // One vCPU, 1 GiB, one hour: exactly the two hourly prices.
        assert_eq!(
            prices.compute_cost(3_600_000, 1000, 1024),
            Micros(50_400 + 16_200)
        );
        // 2 vCPUs, 512 MiB for 10 s: 2 × 14 + 0.5 × 4.5 = 30.25 µ$/s → 302.5 → 302.
        assert_eq!(prices.compute_cost(10_000, 2000, 512), Micros(302));
        assert_eq!(prices.compute_cost(0, 2000, 512), Micros(0));
        // Rounded once from the total, not per interval.
        let pieces: i64 = (0..1000).map(|_| prices.compute_cost(10, 1000, 0).0).sum();
        assert_eq!(pieces, 0);
        assert_eq!(prices.compute_cost(10_000, 1000, 0), Micros(140));
    }

    #[test]
    fn models_match_their_dated_versions_and_the_longest_name_wins() {
        let prices = Prices::default();
        assert_eq!(prices.model("gpt-4o").0, Some("gpt-4o"));
        assert_eq!(prices.model("gpt-4o-2024-08-06").0, Some("gpt-4o"));
        assert_eq!(
            prices.model("gpt-4o-mini-2024-07-18").0,
            Some("gpt-4o-mini")
        );
        assert_eq!(
            prices.model("claude-sonnet-4-5-20250929").0,
            Some("claude-sonnet-4-5")
        );
        assert_eq!(
            prices.model("Claude-Sonnet-4-20250514").0,
            Some("claude-sonnet-4")
        );
        assert_eq!(prices.model("openai/gpt-4.1-mini").0, Some("gpt-4.1-mini"));
        // `gpt-4oz` is not a version of `gpt-4o`.
        assert_eq!(prices.model("gpt-4oz").0, None);
        assert_eq!(prices.model("llama-3").1, &prices.default_model);
    }

    #[test]
    fn a_call_costs_its_tokens_rounded_up() {
        let price = ModelPrice::new(3_000_000, 15_000_000, 300_000, 3_750_000);
        let usage = Usage {
            input: 1000,
            output: 500,
            cache_read: 2000,
            cache_write: 100,
        };
        // 3000 + 7500 + 600 + 375 = 11475 µ$.
        assert_eq!(price.cost(&usage), Micros(11_475));
        let cheap = ModelPrice::new(150_000, 600_000, 75_000, 150_000);
        // 0.15 µ$ rounds up to 1.
        assert_eq!(
            cheap.cost(&Usage {
                input: 1,
                ..Usage::default()
            }),
            Micros(1)
        );
        assert_eq!(cheap.cost(&Usage::default()), Micros(0));
    }

    #[test]
    fn a_price_file_changes_what_it_names() {
        let prices = Prices::from_yaml(
            "compute:\n  vcpu_hour: 0.10\n  gib_hour: 0\nmodels:\n  my-model: { input: 1, output: 2 }\n",
        )
        .unwrap();
        assert_eq!(prices.compute.vcpu_hour, Micros(100_000));
        assert_eq!(prices.compute.gib_hour, Micros(0));
        assert_eq!(prices.model("my-model").1.output, Micros(2_000_000));
        assert_eq!(prices.model("gpt-4o").0, Some("gpt-4o"));
        let err = Prices::from_yaml("compute:\n  vcpu_hour: -1\n  gib_hour: 0\n").unwrap_err();
        assert!(err.to_string().contains("compute.vcpu_hour"), "{err}");
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = Prices::from_yaml("modles: {}\n").unwrap_err();
        assert!(err.to_string().contains("modles"), "{err}");
        let only =
            Prices::from_yaml("replace_models: true\nmodels:\n  a: { input: 1, output: 1 }\n")
                .unwrap();
        assert_eq!(only.models.len(), 1);
    }
}
