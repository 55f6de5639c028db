//! When a point's reading is published (`ReportPolicy`) and how a device's poll is shaped into
//! messages (`PayloadShape`): the vocabulary `validate` produces and `report` decides with.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Which readings of a point are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Every reading (the default).
    #[default]
    EveryPoll,
    /// A reading that differs from the last published one (beyond the deadband, if any).
    OnChange,
}

impl Strategy {
    pub const NAMES: &'static str = "every_poll, on_change";
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::EveryPoll => "every_poll",
            Strategy::OnChange => "on_change",
        }
    }
}

impl FromStr for Strategy {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "every_poll" => Ok(Strategy::EveryPoll),
            "on_change" => Ok(Strategy::OnChange),
            _ => Err(()),
        }
    }
}

/// How far a number must move from the last published value to count as a change.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    /// In the published unit (after scale and offset).
    Absolute(f64),
    /// Percent of the last published value.
    Percent(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ReportPolicy {
    pub strategy: Strategy,
    /// Numeric points with `on_change` only.
    pub deadband: Option<Deadband>,
    /// Publish no more often than this (a quality change still publishes at once).
    pub min_interval: Option<Duration>,
    /// `on_change`: publish at least this often, with the value read in that poll.
    pub max_interval: Option<Duration>,
}

impl fmt::Display for ReportPolicy {
    /// `every_poll`, `on_change (deadband 0.5, max_interval 1m)`: as `explain` and `read` show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.strategy.as_str())?;
        let mut extra = Vec::new();
        match self.deadband {
            Some(Deadband::Absolute(d)) => extra.push(format!("deadband {d}")),
            Some(Deadband::Percent(p)) => extra.push(format!("deadband {p}%")),
            None => {}
        }
        if let Some(d) = self.min_interval {
            extra.push(format!("min_interval {}", humantime::format_duration(d)));
        }
        if let Some(d) = self.max_interval {
            extra.push(format!("max_interval {}", humantime::format_duration(d)));
        }
        if !extra.is_empty() {
            write!(f, " ({})", extra.join(", "))?;
        }
        Ok(())
    }
}

/// How a device's readings become messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PayloadShape {
    /// One message per reported point on `<prefix>/<gateway>/<device>/<point>` (the default).
    #[default]
    Point,
    /// One message per poll on `<prefix>/<gateway>/<device>` with every reported point.
    Device,
}

impl PayloadShape {
    pub const NAMES: &'static str = "point, device";
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadShape::Point => "point",
            PayloadShape::Device => "device",
        }
    }
}

impl FromStr for PayloadShape {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "point" => Ok(PayloadShape::Point),
            "device" => Ok(PayloadShape::Device),
            _ => Err(()),
        }
    }
}
