//! The Home Assistant vocabulary of the config file: which entity a point becomes
//! (`component`), and the device and state classes a point may name. The lists are those of
//! Home Assistant's MQTT sensor, binary sensor, number and switch documentation (release
//! 2025.6, which added `reactive_energy`); an unknown class would make Home Assistant refuse
//! the whole entity, so validation refuses it first.

/// The Home Assistant entity platform a point is discovered as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Sensor,
    BinarySensor,
    Switch,
    Number,
}

impl Component {
    pub const NAMES: &'static str = "sensor, binary_sensor, switch, number";

    /// The platform name, as in the discovery topic.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Sensor => "sensor",
            Component::BinarySensor => "binary_sensor",
            Component::Switch => "switch",
            Component::Number => "number",
        }
    }

    /// The device classes Home Assistant accepts on this platform.
    pub fn device_classes(self) -> &'static [&'static str] {
        match self {
            Component::Sensor => SENSOR_CLASSES,
            Component::Number => NUMBER_CLASSES,
            Component::BinarySensor => BINARY_SENSOR_CLASSES,
            Component::Switch => &["outlet", "switch"],
        }
    }
}

impl std::str::FromStr for Component {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "sensor" => Ok(Component::Sensor),
            "binary_sensor" => Ok(Component::BinarySensor),
            "switch" => Ok(Component::Switch),
            "number" => Ok(Component::Number),
            _ => Err(()),
        }
    }
}

/// `state_class` of a sensor; `none` in the config removes the one the unit implies.
pub const STATE_CLASSES: &[&str] = &["measurement", "total", "total_increasing", "none"];

/// Written as a device class, it removes the class the unit implies.
pub const NO_CLASS: &str = "none";

const SENSOR_CLASSES: &[&str] = &[
    "apparent_power",
    "aqi",
    "area",
    "atmospheric_pressure",
    "battery",
    "blood_glucose_concentration",
    "carbon_dioxide",
    "carbon_monoxide",
    "conductivity",
    "current",
    "data_rate",
    "data_size",
    "date",
    "distance",
    "duration",
    "energy",
    "energy_distance",
    "energy_storage",
    "enum",
    "frequency",
    "gas",
    "humidity",
    "illuminance",
    "irradiance",
    "moisture",
    "monetary",
    "nitrogen_dioxide",
    "nitrogen_monoxide",
    "nitrous_oxide",
    "ozone",
    "ph",
    "pm1",
    "pm10",
    "pm25",
    "power",
    "power_factor",
    "precipitation",
    "precipitation_intensity",
    "pressure",
    "reactive_energy",
    "reactive_power",
    "signal_strength",
    "sound_pressure",
    "speed",
    "sulphur_dioxide",
    "temperature",
    "timestamp",
    "volatile_organic_compounds",
    "volatile_organic_compounds_parts",
    "voltage",
    "volume",
    "volume_flow_rate",
    "volume_storage",
    "water",
    "weight",
    "wind_direction",
    "wind_speed",
];

/// A number has every numeric sensor class (not `date`, `enum`, `timestamp`).
const NUMBER_CLASSES: &[&str] = &[
    "apparent_power",
    "aqi",
    "area",
    "atmospheric_pressure",
    "battery",
    "blood_glucose_concentration",
    "carbon_dioxide",
    "carbon_monoxide",
    "conductivity",
    "current",
    "data_rate",
    "data_size",
    "distance",
    "duration",
    "energy",
    "energy_distance",
    "energy_storage",
    "frequency",
    "gas",
    "humidity",
    "illuminance",
    "irradiance",
    "moisture",
    "monetary",
    "nitrogen_dioxide",
    "nitrogen_monoxide",
    "nitrous_oxide",
    "ozone",
    "ph",
    "pm1",
    "pm10",
    "pm25",
    "power",
    "power_factor",
    "precipitation",
    "precipitation_intensity",
    "pressure",
    "reactive_energy",
    "reactive_power",
    "signal_strength",
    "sound_pressure",
    "speed",
    "sulphur_dioxide",
    "temperature",
    "volatile_organic_compounds",
    "volatile_organic_compounds_parts",
    "voltage",
    "volume",
    "volume_flow_rate",
    "volume_storage",
    "water",
    "weight",
    "wind_direction",
    "wind_speed",
];

const BINARY_SENSOR_CLASSES: &[&str] = &[
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
];

/// A point's Home Assistant hints (`homeassistant = { … }` on a point or a profile point), as
/// validation leaves them: each one set overrides what the point's type and unit imply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointHints {
    /// `false`: the point is not discovered.
    pub discover: bool,
    pub component: Option<Component>,
    /// A class of `component`'s list, or `none`.
    pub device_class: Option<String>,
    /// One of `STATE_CLASSES`.
    pub state_class: Option<String>,
    pub unit_of_measurement: Option<String>,
    /// The entity's name in Home Assistant (default: the point name).
    pub name: Option<String>,
}

/// No hints: the point is discovered as its type and unit say.
impl Default for PointHints {
    fn default() -> Self {
        PointHints {
            discover: true,
            component: None,
            device_class: None,
            state_class: None,
            unit_of_measurement: None,
            name: None,
        }
    }
}
