//! Byte sizes as operators write them: `1024`, `"512KiB"`, `"10MiB"`, `"1GiB"`.

/// Parses `<integer>[B|KiB|MiB|GiB]` (also `KB`/`MB`/`GB` as powers of 1000).
pub fn parse(text: &str) -> Result<u64, String> {
    let hint = || format!("\"{text}\" is not a size; write e.g. \"64KiB\", \"10MiB\" or \"1GiB\"");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits.parse().map_err(|_| hint())?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(hint()),
    };
    value.checked_mul(factor).ok_or_else(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse("1024"), Ok(1024));
        assert_eq!(parse("64KiB"), Ok(65536));
        assert_eq!(parse("10MiB"), Ok(10 << 20));
        assert_eq!(parse("1GiB"), Ok(1 << 30));
        assert_eq!(parse("2MB"), Ok(2_000_000));
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "10 MiB",
            "10mib",
            "99999999999999GiB",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
