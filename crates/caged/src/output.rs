//! Human tables and JSON output, the two shapes every reading command prints.

use serde::Serialize;

/// Prints rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}", width = *width))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub fn json(value: &impl Serialize) {
    // The API's types are strings, numbers and parsed JSON: nothing in them fails to serialize.
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// An optional text as a table cell, `-` when absent.
pub fn cell(value: Option<&str>) -> String {
    value.unwrap_or("-").to_string()
}

/// Micro-dollars as `$1.234567`.
pub fn money(micros: i64) -> String {
    caged_cost::Micros(micros).to_string()
}

/// Bytes as `12.3 MB`.
pub fn megabytes(bytes: i64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// `yes` or `no`.
pub fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_string()
}

/// "3m12s"-style durations for tables.
pub fn duration(seconds: f64) -> String {
    let total = seconds.max(0.0) as u64;
    match total {
        0..=59 => format!("{total}s"),
        60..=3599 => format!("{}m{:02}s", total / 60, total % 60),
        3600..=86_399 => format!("{}h{:02}m", total / 3600, (total % 3600) / 60),
        _ => format!("{}d{:02}h", total / 86_400, (total % 86_400) / 3600),
    }
}
