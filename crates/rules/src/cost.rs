//! Cost estimate (R10): the monthly cost change of a change of concurrent ports.

use crate::ids::InvalidValue;
use crate::limits::PortLimits;

/// The monthly price of one concurrent port, in millionths of a currency unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    currency: String,
    micros_per_port: i64,
}

impl Price {
    /// A price of `micros_per_port` millionths of `currency` (ISO 4217, three uppercase
    /// letters) per concurrent port and month; never negative.
    pub fn new(currency: &str, micros_per_port: i64) -> Result<Self, InvalidValue> {
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(InvalidValue(format!(
                "currency {currency:?} is not an ISO 4217 code like \"USD\""
            )));
        }
        if !(0..=1_000_000_000_000).contains(&micros_per_port) {
            return Err(InvalidValue("price per port must be between 0 and 1,000,000".into()));
        }
        Ok(Self {
            currency: currency.to_owned(),
            micros_per_port,
        })
    }

    /// Parses a decimal amount such as `"12.50"` (at most six decimals).
    pub fn parse(currency: &str, amount: &str) -> Result<Self, InvalidValue> {
        let bad = || InvalidValue(format!("price {amount:?} is not a decimal amount like \"12.50\""));
        let (whole, frac) = amount.split_once('.').unwrap_or((amount, ""));
        if whole.is_empty() || frac.len() > 6 || !whole.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let whole: i64 = whole.parse().map_err(|_| bad())?;
        let frac: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<6}").parse().map_err(|_| bad())?
        };
        let micros = whole
            .checked_mul(1_000_000)
            .and_then(|w| w.checked_add(frac))
            .ok_or_else(bad)?;
        Self::new(currency, micros)
    }

    /// The currency code.
    pub fn currency(&self) -> &str {
        &self.currency
    }

    /// Millionths of the currency per port and month.
    pub fn micros_per_port(&self) -> i64 {
        self.micros_per_port
    }
}

/// An amount in millionths of a currency unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amount {
    /// ISO 4217 currency code.
    pub currency: String,
    /// Millionths of the currency; negative for a saving.
    pub micros: i64,
}

impl Amount {
    /// Whole units and nanos with the same sign (google.type.Money).
    pub fn units_and_nanos(&self) -> (i64, i32) {
        let units = self.micros / 1_000_000;
        let nanos = (self.micros % 1_000_000) as i32 * 1_000;
        (units, nanos)
    }
}

/// The estimated monthly cost change of going from `before` to `after` (R10): the change
/// of concurrent ports times the price; negative for a decrease, zero when concurrent does
/// not change.
pub fn monthly_cost_change(before: PortLimits, after: PortLimits, price: &Price) -> Amount {
    let delta = i64::from(after.concurrent.get()) - i64::from(before.concurrent.get());
    Amount {
        currency: price.currency.clone(),
        micros: delta * price.micros_per_port,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::PortLimit;

    fn c(n: u16) -> PortLimits {
        PortLimits {
            concurrent: PortLimit::new(n).unwrap(),
            ..PortLimits::default()
        }
    }

    #[test]
    fn cost_is_delta_times_price() {
        let p = Price::parse("USD", "12.50").unwrap();
        assert_eq!(p.micros_per_port(), 12_500_000);
        let up = monthly_cost_change(c(100), c(120), &p);
        assert_eq!(up.micros, 250_000_000);
        assert_eq!(up.units_and_nanos(), (250, 0));
        let down = monthly_cost_change(c(120), c(117), &p);
        assert_eq!(down.units_and_nanos(), (-37, -500_000_000));
        assert_eq!(monthly_cost_change(c(9_999), c(9_999), &p).micros, 0);
    }

    #[test]
    fn the_largest_change_does_not_overflow() {
        let p = Price::parse("USD", "1000000").unwrap();
        assert_eq!(
            monthly_cost_change(c(0), c(9_999), &p).micros,
            9_999 * 1_000_000 * 1_000_000
        );
    }

    #[test]
    fn prices_are_validated() {
        assert!(Price::parse("usd", "1").is_err());
        assert!(Price::parse("USD", "-1").is_err());
        assert!(Price::parse("USD", "1.2345678").is_err());
        assert!(Price::parse("USD", "").is_err());
        assert!(Price::parse("USD", "1e3").is_err());
        assert!(Price::parse("USD", "99999999999999999999").is_err());
        assert_eq!(Price::parse("EUR", "0.5").unwrap().micros_per_port(), 500_000);
        assert_eq!(Price::parse("EUR", "7").unwrap().micros_per_port(), 7_000_000);
    }
}
