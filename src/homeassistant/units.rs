//! What a point's unit tells Home Assistant (pure): the sensor `device_class`, the
//! `state_class`, and the unit spelled the way Home Assistant expects it (`%RH` is a humidity
//! in `%`; micrograms per cubic metre use the Greek mu). A class Home Assistant pairs with other
//! units would make it refuse the entity, so a unit not in the table gets no device class.

/// The classes a numeric point's unit implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Implied {
    pub device_class: Option<&'static str>,
    pub state_class: &'static str,
    /// The unit as Home Assistant spells it; `None`: the point's own unit as it is.
    pub unit: Option<&'static str>,
}

const MEASUREMENT: &str = "measurement";
const TOTAL_INCREASING: &str = "total_increasing";

/// `unit` of a numeric point called `point` (the name tells PM1, PM2.5 and PM10 apart, which
/// share one unit).
pub fn implied(unit: Option<&str>, point: &str) -> Implied {
    let plain = |device_class, state_class| Implied {
        device_class,
        state_class,
        unit: None,
    };
    let Some(unit) = unit else {
        return plain(None, MEASUREMENT);
    };
    match unit {
        "Wh" | "kWh" | "MWh" | "GWh" => plain(Some("energy"), TOTAL_INCREASING),
        "varh" | "kvarh" => plain(Some("reactive_energy"), TOTAL_INCREASING),
        // Counters with no device class of their own.
        "VAh" | "kVAh" | "Ah" => plain(None, TOTAL_INCREASING),
        "W" | "kW" | "MW" => plain(Some("power"), MEASUREMENT),
        "VA" | "kVA" => plain(Some("apparent_power"), MEASUREMENT),
        "var" | "kvar" => plain(Some("reactive_power"), MEASUREMENT),
        "V" | "mV" | "kV" => plain(Some("voltage"), MEASUREMENT),
        "A" | "mA" => plain(Some("current"), MEASUREMENT),
        "Hz" | "kHz" => plain(Some("frequency"), MEASUREMENT),
        "°C" | "°F" | "K" => plain(Some("temperature"), MEASUREMENT),
        "%RH" => Implied {
            device_class: Some("humidity"),
            state_class: MEASUREMENT,
            unit: Some("%"),
        },
        "Pa" | "hPa" | "kPa" | "bar" | "mbar" | "psi" | "mmHg" | "inHg" => {
            plain(Some("pressure"), MEASUREMENT)
        }
        "ppm" => plain(Some("carbon_dioxide"), MEASUREMENT),
        // U+00B5 (micro sign), U+03BC (Greek mu) and ASCII spellings.
        "µg/m³" | "μg/m³" | "ug/m3" | "ug/m³" => Implied {
            device_class: particulate(point),
            state_class: MEASUREMENT,
            unit: Some("μg/m³"),
        },
        "ms" | "s" | "min" | "h" | "d" => plain(Some("duration"), MEASUREMENT),
        "lx" => plain(Some("illuminance"), MEASUREMENT),
        "dBm" => plain(Some("signal_strength"), MEASUREMENT),
        _ => plain(None, MEASUREMENT),
    }
}

/// PM1, PM2.5 or PM10 from a point name such as `pm25`, `pm2_5`, `PM10` or `pm1.0`.
fn particulate(point: &str) -> Option<&'static str> {
    let digits: String = point
        .to_ascii_lowercase()
        .split("pm")
        .nth(1)?
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '_' || *c == '.')
        .filter(|c| c.is_ascii_digit())
        .collect();
    match digits.as_str() {
        "1" | "10" if point.to_ascii_lowercase().contains("pm10") => Some("pm10"),
        "1" | "10" => Some("pm1"),
        "25" => Some("pm25"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unit_implies_the_device_class_state_class_and_spelling_home_assistant_expects() {
        // (unit, point name, device class, state class, unit Home Assistant gets)
        type Case<'a> = (
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
            &'a str,
            Option<&'a str>,
        );
        let cases: &[Case] = &[
            (
                Some("kWh"),
                "import",
                Some("energy"),
                "total_increasing",
                None,
            ),
            (Some("Wh"), "e", Some("energy"), "total_increasing", None),
            (Some("MWh"), "e", Some("energy"), "total_increasing", None),
            (
                Some("kvarh"),
                "q",
                Some("reactive_energy"),
                "total_increasing",
                None,
            ),
            (Some("kVAh"), "s", None, "total_increasing", None),
            (Some("Ah"), "charge", None, "total_increasing", None),
            (Some("W"), "p", Some("power"), "measurement", None),
            (Some("kW"), "p", Some("power"), "measurement", None),
            (Some("VA"), "s", Some("apparent_power"), "measurement", None),
            (
                Some("var"),
                "q",
                Some("reactive_power"),
                "measurement",
                None,
            ),
            (Some("V"), "u", Some("voltage"), "measurement", None),
            (Some("A"), "i", Some("current"), "measurement", None),
            (Some("mA"), "i", Some("current"), "measurement", None),
            (Some("Hz"), "f", Some("frequency"), "measurement", None),
            (Some("°C"), "t", Some("temperature"), "measurement", None),
            (Some("°F"), "t", Some("temperature"), "measurement", None),
            (Some("%"), "thd", None, "measurement", None),
            (
                Some("%RH"),
                "rh",
                Some("humidity"),
                "measurement",
                Some("%"),
            ),
            (Some("hPa"), "p", Some("pressure"), "measurement", None),
            (Some("bar"), "p", Some("pressure"), "measurement", None),
            (
                Some("ppm"),
                "co2",
                Some("carbon_dioxide"),
                "measurement",
                None,
            ),
            (
                Some("µg/m³"),
                "pm25",
                Some("pm25"),
                "measurement",
                Some("μg/m³"),
            ),
            (
                Some("µg/m³"),
                "pm2_5",
                Some("pm25"),
                "measurement",
                Some("μg/m³"),
            ),
            (
                Some("ug/m3"),
                "PM10",
                Some("pm10"),
                "measurement",
                Some("μg/m³"),
            ),
            (
                Some("μg/m³"),
                "pm1",
                Some("pm1"),
                "measurement",
                Some("μg/m³"),
            ),
            (
                Some("μg/m³"),
                "pm1.0",
                Some("pm1"),
                "measurement",
                Some("μg/m³"),
            ),
            (Some("µg/m³"), "dust", None, "measurement", Some("μg/m³")),
            (
                Some("µg/m³"),
                "pm10_avg",
                Some("pm10"),
                "measurement",
                Some("μg/m³"),
            ),
            (Some("ms"), "rtt", Some("duration"), "measurement", None),
            (
                Some("lx"),
                "light",
                Some("illuminance"),
                "measurement",
                None,
            ),
            (Some("°"), "phase_angle", None, "measurement", None),
            (Some("rpm"), "speed", None, "measurement", None),
            (None, "power_factor", None, "measurement", None),
        ];
        for &(unit, point, dc, sc, ha_unit) in cases {
            assert_eq!(
                implied(unit, point),
                Implied {
                    device_class: dc,
                    state_class: sc,
                    unit: ha_unit,
                },
                "{unit:?} on {point}"
            );
        }
    }
}
