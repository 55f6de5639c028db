//! The Modbus driver: one device (a unit id) on a line owned by a bus task (`bus`). Modbus TCP
//! and RTU are the same driver; only the bus's connector differs.
//!
//! The driver plans its reads once (`plan`), sends each planned request through the bus, and
//! decodes the answers (`decode`). It never touches the connection: timeouts, line hygiene and
//! reconnects belong to the bus, schedule and backoff to the poller.

use super::bus::{Answer, BusHandle, Exchange};
use super::decode::decode_registers;
use super::plan::{plan, ReadRequest};
use crate::config::{Device, Point};
use crate::device::value::{scale, Transform};
use crate::device::{DeviceError, Driver};
use crate::flow::{now_ms, Quality, Reading, Value};
use crate::ops::stats::bump;

pub struct ModbusDriver {
    device: Device,
    plan: Vec<ReadRequest>,
    bus: BusHandle,
    /// The longest a poll may take, including waiting behind other units on a shared line.
    max_poll_time: std::time::Duration,
    /// Retries apply only while the device answers: a dead unit must not cost the other units
    /// on its line more than one timeout per attempt.
    answering: bool,
}

impl ModbusDriver {
    pub fn new(device: Device, bus: BusHandle, max_poll_time: std::time::Duration) -> Self {
        let plan = plan(&device.points, &device.limits);
        ModbusDriver {
            device,
            plan,
            bus,
            max_poll_time,
            answering: false,
        }
    }

    pub fn requests_per_cycle(&self) -> usize {
        self.plan.len()
    }

    async fn read(&self, req: &ReadRequest) -> Result<Answer, DeviceError> {
        let retries = if self.answering {
            self.device.retries
        } else {
            0
        };
        let ex = Exchange::Read {
            table: req.table,
            start: req.start,
            count: req.count,
        };
        self.bus
            .call(self.device.unit_id, ex, self.device.timeout, retries)
            .await
    }
}

/// The worst case of one poll of `device` alone: every planned request with every retry.
pub fn own_poll_budget(device: &Device) -> std::time::Duration {
    let requests = plan(&device.points, &device.limits).len();
    // Every attempt (the retries, plus one more after a garbage answer) may follow a wait of
    // one timeout for the unit's late reply.
    let attempts = (2 + u32::from(device.retries)) * 2;
    let calls = u32::try_from(requests)
        .unwrap_or(u32::MAX)
        .saturating_mul(attempts)
        .saturating_add(2); // resolve + connect
    device.timeout.saturating_mul(calls)
}

impl Driver for ModbusDriver {
    fn max_poll_time(&self) -> std::time::Duration {
        self.max_poll_time
    }

    fn missed_interval(&self) {
        let stats = self.bus.stats();
        bump(&stats.late_polls);
        stats.unit(self.device.unit_id, |u| bump(&u.late_polls));
    }

    async fn poll(&mut self) -> Result<Vec<Reading>, DeviceError> {
        let mut out = Vec::with_capacity(self.device.points.len());
        for req in &self.plan {
            let answer = match self.read(req).await {
                Ok(a) => a,
                Err(e) => {
                    self.answering = false;
                    return Err(e);
                }
            };
            let ts_ms = now_ms();
            for &(idx, off) in &req.points {
                let Some(p) = self.device.points.get(idx) else {
                    continue;
                };
                let (value, quality, error) = point_value(p, &answer, off, req.count);
                if let Some(e) = &error {
                    // The journal field EVENT=point_exception is documented for exceptions.
                    let event = if matches!(answer, Answer::Exception(_)) {
                        "point_exception"
                    } else {
                        "point_bad"
                    };
                    tracing::debug!(
                        event,
                        device = %self.device.name,
                        unit_id = self.device.unit_id,
                        point = %p.name,
                        error = %e,
                        "point read failed"
                    );
                }
                out.push(Reading {
                    device: self.device.name.clone(),
                    point: p.name.clone(),
                    value,
                    unit: p.unit.clone(),
                    ts_ms,
                    quality,
                    error,
                });
            }
        }
        self.answering = true;
        Ok(out)
    }
}

/// The value of point `p` inside the answer to a request, `off` registers (or bits) from its
/// start. Pure; a device's exception is a bad-quality reading, not a failed poll.
pub fn point_value(
    p: &Point,
    answer: &Answer,
    off: u16,
    asked: u16,
) -> (Value, Quality, Option<String>) {
    match answer {
        Answer::Exception(code) => (
            Value::Null,
            Quality::Bad,
            Some(format!("device answered with Modbus exception {code}")),
        ),
        Answer::Words(words) => {
            let s = usize::from(off);
            match words
                .get(s..s + usize::from(p.width()))
                .and_then(|regs| decode_registers(regs, p.data_type, p.word_order, p.bit))
            {
                Some(raw) => {
                    let t = Transform {
                        scale: p.scale,
                        offset: p.offset,
                        decimals: p.decimals,
                    };
                    (scale(raw, &t), Quality::Good, None)
                }
                None => short_reply(words.len(), asked),
            }
        }
        Answer::Bits(bits) => match bits.get(usize::from(off)) {
            Some(b) => (Value::Bool(*b), Quality::Good, None),
            None => short_reply(bits.len(), asked),
        },
        Answer::Written => (
            Value::Null,
            Quality::Bad,
            Some("a write was answered to a read".into()),
        ),
    }
}

fn short_reply(got: usize, asked: u16) -> (Value, Quality, Option<String>) {
    (
        Value::Null,
        Quality::Bad,
        Some(format!("short reply: {got} of {asked} values")),
    )
}
